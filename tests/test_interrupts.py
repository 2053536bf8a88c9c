"""Interrupts and write faults on real `edgecpm` processes: export (gguf, onnx, executorch), `package android`
and `profile` are started as subprocesses and hit with SIGINT / SIGTERM at several moments (a moment is an
event the test sees from outside: the staging folder appearing, a file in it, a progress line on stderr), or
run under a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored so writes fail with EFBIG), on a full tmpfs, on a
read-only bind mount or in a folder without write permission. Nothing is mocked.

Each case checks: the exit status (130 SIGINT, 143 SIGTERM, 2 for a write fault), one `edgecpm:` line on
stderr and no traceback, no staging / temporary file left beside or inside OUT (nor in TMPDIR), the previous
artifact byte for byte (or, when the signal came after the install had begun, the complete new one), and every
file edgecpm did not write still there. Set EDGECPM_RELIABILITY_LOG=FILE to append one JSON line per case
(docs/reliability.md's tables come from it).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDGECPM_TEST_CACHE", Path.home() / ".cache" / "edgecpm" / "checkpoints")) / "interrupts"
PROFILE_ARGS = ["--contexts", "16", "--decode-tokens", "4", "--fidelity-tokens", "8", "--backend", "torch"]
PROFILE_ARGS += ["--no-calibrate", "--threads", "1"]
WAIT_S = 300  # upper bound for reaching a moment and for the exit after the signal (shared, loaded CI box)


# ---- artifacts the cases start from (built once through the API, cached) -----------------------------------


def _cached(name: str, build) -> Path:
    target = CACHE / name
    if not (target / "edgecpm.json").is_file():
        tmp = CACHE / f".{name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        build(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


@pytest.fixture(scope="session")
def executorch_artifact(tiny_tied: Path) -> Path:
    pytest.importorskip("executorch")
    import edgecpm

    return _cached("executorch-fp32", lambda d: edgecpm.export(tiny_tied, "executorch", d, progress=False))


def _previous(op: str, tiny_tied: Path, request) -> Path | None:
    """The artifact a case's OUT holds before the run (a different quant where the format has one)."""
    import edgecpm

    if op == "gguf":
        return _cached("gguf-f16", lambda d: edgecpm.export(tiny_tied, "gguf", d, quant="f16", progress=False))
    if op == "onnx":
        pytest.importorskip("onnx")
        return _cached("onnx-fp16", lambda d: edgecpm.export(tiny_tied, "onnx", d, quant="fp16", progress=False))
    if op == "executorch":
        return request.getfixturevalue("executorch_artifact")
    if op == "android":
        from edgecpm.exporters.executorch_android import package_android

        art = request.getfixturevalue("executorch_artifact")

        def build(d: Path) -> None:
            package_android(art, d, verify=False)

        return _cached("android-bundle", build)
    if op == "profile":  # any earlier files named like the report: they must survive whole or be replaced whole
        d = CACHE / "previous-report"
        if not (d / "edgecpm.json").is_file():
            (d / "plots").mkdir(parents=True, exist_ok=True)
            for name in ("report.json", "report.md", "report.html", "plots/memory.png"):
                (d / name).write_bytes(f"previous {name}\n".encode())
            (d / "edgecpm.json").write_text("{}")  # the cache marker; also a foreign file profile must keep
        return d
    raise AssertionError(op)


def _argv(op: str, src: Path, out: Path, request) -> list[str]:
    if op == "gguf":
        return ["export", str(src), "--format", "gguf", "--quant", "q8_0", "--out", str(out)]
    if op == "onnx":
        return ["export", str(src), "--format", "onnx", "--quant", "fp32", "--out", str(out)]
    if op == "executorch":
        return ["export", str(src), "--format", "executorch", "--out", str(out)]
    if op == "android":
        return ["package", "android", str(request.getfixturevalue("executorch_artifact")), "--out", str(out)]
    if op == "profile":
        return ["profile", str(src), "--out", str(out), *PROFILE_ARGS]
    raise AssertionError(op)


# ---- what a folder holds -------------------------------------------------------------------------------------


def tree(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (hidden ones too): a file's SHA-256, 'dir', or 'link -> target'."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Layout:
    """OUT inside a work folder with files edgecpm did not write beside it (and, for profile, inside it)."""

    work: Path
    out: Path
    tmpdir: Path
    before: dict[str, str] = field(default_factory=dict)
    previous: dict[str, str] = field(default_factory=dict)


def make_layout(base: Path, op: str, previous: Path | None) -> Layout:
    work = base / "work"
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("a user's file beside OUT\n")
    (work / "other").mkdir()
    (work / "other" / "notes.md").write_text("another folder of the user's\n")
    out = work / ("report" if op == "profile" else "art")
    if previous is not None:
        shutil.copytree(previous, out, symlinks=True)
    if op == "profile":
        (out / "mine.txt").write_text("a user's file inside the report folder\n")
    tmpdir = base / "tmpdir"
    tmpdir.mkdir()
    lay = Layout(work, out, tmpdir, tree(work), tree(out) if out.exists() else {})
    return lay


def _leftovers(lay: Layout) -> list[str]:
    """Temporary / staging names edgecpm may create, anywhere under the work folder, and anything in TMPDIR."""
    found = [
        k
        for k in tree(lay.work)
        if ".edgecpm-tmp-" in k or ".edgecpm-old-" in k or ".tmp" in Path(k).name or k.endswith(".tmp")
    ]
    # torch's compile cache (torchinductor_<user>) is made by every run, interrupted or not: not a leftover
    tmp = [k for k in tree(lay.tmpdir) if not k.split("/")[0].startswith("torchinductor_")]
    return found + [f"TMPDIR/{k}" for k in tmp]


def outcome(lay: Layout, op: str) -> str:
    """'previous' (OUT byte for byte as before), 'new' (a complete new artifact) or 'none' (no OUT, none before)."""
    if not lay.out.exists():
        assert not lay.previous, "OUT was removed"
        return "none"
    now = tree(lay.out)
    if now == lay.previous:
        return "previous"
    if op == "profile":  # a complete new report: every file it lists exists, the user's file is kept
        report = json.loads((lay.out / "report.json").read_text())
        assert all(Path(f).is_file() for f in report["files"]), report["files"]
        for name in ("report.json", "report.md", "report.html", "plots/memory.png"):  # not a mix of old and new
            assert not (lay.out / name).read_bytes().startswith(b"previous"), name
        assert (lay.out / "mine.txt").read_text().startswith("a user's file")
        return "new"
    from edgecpm.exporters.manifest import read_manifest

    m = read_manifest(lay.out)
    for name in m.model_files + m.tokenizer_files:
        assert (lay.out / name).is_file(), name
    return "new"


def assert_user_files_kept(lay: Layout) -> None:
    now = tree(lay.work)
    for rel, digest in lay.before.items():
        inside_out = rel == lay.out.name or rel.startswith(lay.out.name + "/")
        if not inside_out:
            assert now.get(rel) == digest, f"{rel} was changed or deleted"


def stderr_lines(text: str) -> list[str]:
    """What a terminal would show: per line the text after the last carriage return (progress bars)."""
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in text.split("\n")]
    return [ln for ln in lines if ln]


def _log(record: dict) -> None:
    path = os.environ.get("EDGECPM_RELIABILITY_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


# ---- running and signalling ----------------------------------------------------------------------------------


def _env(lay: Layout) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(lay.tmpdir), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Proc:
    """A running `python -m edgecpm ...` whose stderr is collected by a thread (so the pipe never fills)."""

    def __init__(self, argv: list[str], env: dict[str, str], prefix: list[str] | None = None, **kw) -> None:
        self.p = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "edgecpm", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            **kw,
        )
        self.err = b""
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.p.stderr.read1(4096), b""):
            self.err += chunk

    def wait(self, timeout: float = WAIT_S, what: str = "after the signal") -> tuple[int, str]:
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(f"no exit {timeout} s {what}: {self.stderr[-2000:]}") from None
        self._t.join(10)
        return rc, self.stderr

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8", "replace")


def _staging(lay: Layout) -> list[Path]:
    return [p for p in lay.work.iterdir() if p.name.startswith(f".{lay.out.name}.edgecpm-tmp-")]


def reached(moment: str, lay: Layout, proc: Proc) -> bool:
    """Whether the run has reached `moment` (polled from outside; nothing inside the process is changed)."""
    if moment == "staging":
        return bool(_staging(lay))
    if moment == "writing":  # a file with bytes in the staging folder
        return any(f.is_file() and f.stat().st_size > 0 for d in _staging(lay) for f in d.rglob("*"))
    if moment.startswith("stderr:"):
        return moment[len("stderr:") :] in proc.stderr
    if moment.startswith("after:"):  # seconds after the first progress output (the command is running)
        return False
    raise AssertionError(moment)


def run_to_moment(argv: list[str], lay: Layout, moment: str) -> tuple[Proc, float]:
    proc = Proc(argv, _env(lay))
    t0 = time.monotonic()
    if moment.startswith("after:"):
        while not proc.err and proc.p.poll() is None and time.monotonic() - t0 < WAIT_S:
            time.sleep(0.01)
        time.sleep(float(moment[len("after:") :]))
        return proc, time.monotonic() - t0
    while time.monotonic() - t0 < WAIT_S:
        if reached(moment, lay, proc):
            return proc, time.monotonic() - t0
        if proc.p.poll() is not None:
            break
        time.sleep(0.002)
    rc, err = proc.wait(5)
    raise AssertionError(f"{argv[0]} ended (rc {rc}) before {moment}: {err[-2000:]}")


# (operation, signal, moment); the default suite runs a few cheap ones (seconds each on an idle 2-core box), the
# rest are slow
DEFAULT = [
    ("gguf", "SIGINT", "staging"),
    ("gguf", "SIGTERM", "writing"),
    ("onnx", "SIGTERM", "writing"),
    ("profile", "SIGTERM", "stderr:probing host"),
]
SLOW = [
    ("gguf", "SIGTERM", "staging"),
    ("gguf", "SIGINT", "writing"),
    ("gguf", "SIGINT", "after:0.3"),
    ("gguf", "SIGTERM", "after:0.3"),
    ("onnx", "SIGINT", "staging"),
    ("onnx", "SIGINT", "writing"),
    ("onnx", "SIGTERM", "after:0.3"),
    ("executorch", "SIGINT", "staging"),
    ("executorch", "SIGTERM", "staging"),
    ("executorch", "SIGINT", "stderr:export + lower"),
    ("executorch", "SIGTERM", "stderr:export + lower"),
    ("executorch", "SIGTERM", "writing"),
    ("android", "SIGINT", "staging"),
    ("android", "SIGTERM", "staging"),
    ("android", "SIGINT", "writing"),
    ("android", "SIGTERM", "writing"),
    ("android", "SIGINT", "after:1"),
    ("profile", "SIGINT", "stderr:torch: timing"),
    ("profile", "SIGTERM", "stderr:torch: timing"),
    ("profile", "SIGINT", "stderr:probing host"),
    ("profile", "SIGTERM", "stderr:calibrating"),
    ("profile", "SIGINT", "stderr:calibrating"),
]
CASES = [pytest.param(*c, id="-".join(c)) for c in DEFAULT] + [
    pytest.param(*c, id="-".join(c), marks=pytest.mark.slow) for c in SLOW
]
EXIT = {"SIGINT": (130, "edgecpm: interrupted"), "SIGTERM": (143, "edgecpm: terminated")}


@pytest.mark.parametrize("op,sig,moment", CASES)
def test_signal_leaves_no_partial_output(op: str, sig: str, moment: str, tiny_tied: Path, tmp_path: Path, request):
    if op in ("executorch", "android"):
        pytest.importorskip("executorch")
    lay = make_layout(tmp_path, op, _previous(op, tiny_tied, request))
    proc, at = run_to_moment(_argv(op, tiny_tied, lay.out, request), lay, moment)
    proc.p.send_signal(getattr(signal, sig))
    t_sig = time.monotonic()
    rc, err = proc.wait()
    exit_s = time.monotonic() - t_sig
    lines = stderr_lines(err)
    result = outcome(lay, op)
    _log(
        {"test": "signal", "op": op, "signal": sig, "moment": moment, "at_s": round(at, 2), "rc": rc,
         "exit_s": round(exit_s, 2), "out": result, "leftovers": _leftovers(lay), "stderr": lines[-1:]}
    )  # fmt: skip
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    if rc in (0, -getattr(signal, sig)):
        # the command had finished: rc 0, or the signal came during interpreter shutdown and ended the process
        # by itself (a shell shows 130 / 143); the new artifact is then complete
        assert result == "new", err[-2000:]
    else:
        code, line = EXIT[sig]
        assert rc == code, err[-2000:]
        assert lines[-1:] == [line] and sum(ln.startswith("edgecpm:") for ln in lines) == 1, lines
        assert result in ("previous", "new")
        if moment in ("staging", "writing"):
            assert result == "previous", "the signal came before the install, yet OUT changed"
    assert _leftovers(lay) == []
    assert_user_files_kept(lay)


# ---- write faults --------------------------------------------------------------------------------------------


def _fsize_limit(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def _fault_run(argv: list[str], lay: Layout, prefix: list[str] | None = None, **kw) -> tuple[int, str]:
    return Proc(argv, _env(lay), prefix=prefix, **kw).wait(3 * WAIT_S, "after the start")  # a whole run


def _assert_fault(rc: int, err: str, lay: Layout, op: str, what: str, expect: tuple[str, ...]) -> None:
    lines = stderr_lines(err)
    result = outcome(lay, op)
    _log({"test": "fault", "op": op, "fault": what, "rc": rc, "out": result, "leftovers": _leftovers(lay),
          "stderr": lines[-1:]})  # fmt: skip
    assert "Traceback" not in err, err[-3000:]
    assert rc == 2, err[-2000:]
    assert len([ln for ln in lines if ln.startswith("edgecpm:")]) == 1, lines
    assert lines[-1].startswith("edgecpm: error: cannot write "), lines
    assert any(e in lines[-1] for e in expect) and str(lay.out) in lines[-1], lines
    assert result == ("previous" if lay.previous else "none")
    assert _leftovers(lay) == []
    assert_user_files_kept(lay)


# The limit sits below the largest file each command writes (gguf q8_0 ~100 KB, onnx data ~2.5 MB, program
# ~0.8 MB, report.html ~120 KB) and above everything it writes elsewhere first (host probe JSON, crash logs).
FSIZE = {"gguf": 48 << 10, "onnx": 256 << 10, "executorch": 256 << 10, "android": 256 << 10, "profile": 64 << 10}
SLOW_MARK = pytest.mark.slow
FAULT_OPS = [pytest.param("gguf"), pytest.param("onnx")]
FAULT_OPS += [pytest.param(op, marks=SLOW_MARK) for op in ("executorch", "android", "profile")]


@pytest.mark.parametrize("op", FAULT_OPS)
def test_file_size_limit_is_one_line_and_keeps_the_previous_artifact(op: str, tiny_tied: Path, tmp_path, request):
    """RLIMIT_FSIZE: the write that crosses it fails with EFBIG (as a full disk fails with ENOSPC)."""
    if op in ("executorch", "android"):
        pytest.importorskip("executorch")
    lay = make_layout(tmp_path, op, _previous(op, tiny_tied, request))
    argv = _argv(op, tiny_tied, lay.out, request)
    rc, err = _fault_run(argv, lay, preexec_fn=_fsize_limit(FSIZE[op]))
    _assert_fault(rc, err, lay, op, "RLIMIT_FSIZE", ("file size limit",))


def _can_mount() -> str | None:
    """Why a private mount namespace (unshare -m) is not available here, or None."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare/mount not installed"
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(
            ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$1" && mount -o remount,ro "$1"', "sh", d],
            capture_output=True,
            text=True,
        )
    return None if r.returncode == 0 else f"no private mount namespace: {r.stderr.strip()[:200]}"


NS_WRAPPER = r"""
import json, os, shutil, subprocess, sys
mode, mnt, arg = sys.argv[1], sys.argv[2], sys.argv[3]
argv = sys.argv[4:]
if mode == "ro":  # the folder itself, read-only in this namespace only
    subprocess.run(["mount", "--bind", mnt, mnt], check=True)
    subprocess.run(["mount", "-o", "remount,ro,bind", mnt], check=True)
    os.execvp(argv[0], argv)
# "full": a tmpfs of `arg` bytes over `mnt`, holding a copy of what was there; filled to the brim first
keep = mnt + ".outside"
shutil.copytree(mnt, keep, symlinks=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={arg}", "tmpfs", mnt], check=True)
shutil.copytree(keep, mnt, symlinks=True, dirs_exist_ok=True)
rc = subprocess.call(argv)
shutil.rmtree(keep)
shutil.copytree(mnt, keep, symlinks=True)  # hand what the command left on the tmpfs back to the test
subprocess.run(["umount", mnt], check=True)
shutil.rmtree(mnt)
os.replace(keep, mnt)
sys.exit(rc)
"""


def _ns_prefix(tmp_path: Path, mode: str, mnt: Path, arg: str = "-") -> list[str]:
    wrapper = tmp_path / "ns_wrapper.py"
    wrapper.write_text(NS_WRAPPER)
    return ["unshare", "-m", sys.executable, str(wrapper), mode, str(mnt), arg]


RO_OPS = [pytest.param("gguf"), pytest.param("profile")]
RO_OPS += [pytest.param(op, marks=SLOW_MARK) for op in ("onnx", "executorch", "android")]


@pytest.mark.parametrize("op", RO_OPS)
def test_read_only_file_system_is_one_line(op: str, tiny_tied: Path, tmp_path: Path, request):
    """The work folder is a read-only bind mount (EROFS) in the command's own mount namespace."""
    why = _can_mount()
    if why:
        pytest.skip(why)
    if op in ("executorch", "android"):
        pytest.importorskip("executorch")
    lay = make_layout(tmp_path, op, _previous(op, tiny_tied, request))
    argv = _argv(op, tiny_tied, lay.out, request)
    rc, err = _fault_run(argv, lay, prefix=_ns_prefix(tmp_path, "ro", lay.work))
    _assert_fault(rc, err, lay, op, "read-only bind mount", ("read-only file system",))


FULL_OPS = [pytest.param("gguf")] + [pytest.param(op, marks=SLOW_MARK) for op in ("onnx", "android", "profile")]


@pytest.mark.parametrize("op", FULL_OPS)
def test_full_disk_is_one_line(op: str, tiny_tied: Path, tmp_path: Path, request):
    """The work folder is a tmpfs just larger than what it holds (ENOSPC), in the command's namespace."""
    why = _can_mount()
    if why:
        pytest.skip(why)
    if op == "android":
        pytest.importorskip("executorch")
    lay = make_layout(tmp_path, op, _previous(op, tiny_tied, request))
    held = sum(p.stat().st_size for p in lay.work.rglob("*") if p.is_file())
    size = held + (64 << 10) + 4096 * sum(1 for _ in lay.work.rglob("*"))  # room for the small files only
    argv = _argv(op, tiny_tied, lay.out, request)
    rc, err = _fault_run(argv, lay, prefix=_ns_prefix(tmp_path, "full", lay.work, str(size)))
    _assert_fault(rc, err, lay, op, "full tmpfs", ("no space left", "disk full"))


def _drop_dac_override() -> None:
    """preexec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so root (whom mode bits do
    not stop) gets the permissions of a file's owner, as anyone else would, after the exec."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("op", ["gguf", *(pytest.param(op, marks=SLOW_MARK) for op in ("android", "profile"))])
def test_folder_without_write_permission_is_one_line(op: str, tiny_tied: Path, tmp_path: Path, request):
    """chmod 0o555 on the work folder and OUT (EACCES). As root the command runs without CAP_DAC_OVERRIDE, so
    the mode bits apply to it as to any user."""
    if op == "android":
        pytest.importorskip("executorch")
    lay = make_layout(tmp_path, op, _previous(op, tiny_tied, request))
    kw = {"preexec_fn": _drop_dac_override} if os.geteuid() == 0 else {}
    folders = [lay.work, *(p for p in lay.work.rglob("*") if p.is_dir())]
    for d in folders:
        os.chmod(d, 0o555)
    try:
        rc, err = _fault_run(_argv(op, tiny_tied, lay.out, request), lay, **kw)
    finally:
        for d in folders:
            os.chmod(d, 0o755)
    how = "chmod 0555" + (" (root without CAP_DAC_OVERRIDE)" if kw else "")
    _assert_fault(rc, err, lay, op, how, ("permission denied",))
