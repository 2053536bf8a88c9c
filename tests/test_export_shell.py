"""The one export shell: one `Artifact` type for every format, one output policy (only an edgecpm artifact of
the same format is replaced; a foreign folder or file is refused and left intact), one checksum rule, and an
atomic install checked by killing real export processes (SIGTERM and SIGKILL) at several moments."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

import edgecpm
from edgecpm.cli import main
from edgecpm.config import preset_config
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.artifact import Artifact
from edgecpm.exporters.manifest import make_manifest, read_manifest, source_checksum
from edgecpm.exporters.shell import source_files

OPTIONS = {"gguf": {}, "onnx": {}, "executorch": {"max_context_len": 16, "max_seq_len": 8}}
QUANTS = {"gguf": ("f16", "q8_0"), "onnx": ("fp32", "int8"), "executorch": ("fp32", "8da4w")}
IMPORTS = {"gguf": "gguf", "onnx": "onnx", "executorch": "executorch.exir"}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".edgecpm-" in p.name)


def _plain(m) -> dict:
    return json.loads(json.dumps(asdict(m)))


# the ExecuTorch case lowers a program (~20 s); its Artifact is also used by test_executorch_quant.py
@pytest.mark.parametrize("fmt", ["gguf", "onnx", pytest.param("executorch", marks=pytest.mark.slow)])
def test_every_format_returns_the_same_artifact_type(fmt: str, tiny_tied: Path, tmp_path: Path) -> None:
    pytest.importorskip(IMPORTS[fmt])
    out = tmp_path / "art"
    art = edgecpm.export(tiny_tied, format=fmt, out=out, quant=QUANTS[fmt][0], progress=False, **OPTIONS[fmt])
    assert type(art) is Artifact and art.path == out  # README: edgecpm.load(art.path)
    assert art.model_file == out / art.manifest.model_files[0] and art.model_file.is_file()
    assert _plain(art.manifest) == _plain(read_manifest(out))
    assert (art.manifest.format, art.manifest.quant) == (fmt, QUANTS[fmt][0])
    # one checksum rule for every format: the source's weight files plus config.json
    files = source_files(tiny_tied)
    assert sorted(p.name for p in files) == sorted([p.name for p in tiny_tied.glob("*.safetensors")] + ["config.json"])
    assert art.manifest.source_checksum == source_checksum(files)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_an_artifact_of_the_same_format_is_replaced(fmt: str, tiny_tied: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip(IMPORTS[fmt])
    out = tmp_path / "art"
    old, new = QUANTS[fmt]
    edgecpm.export(tiny_tied, format=fmt, out=out, quant=old, progress=False)
    rc = main(["export", str(tiny_tied), "--format", fmt, "--quant", new, "--out", str(out), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["path"] == str(out) and printed["quant"] == new
    assert read_manifest(out).quant == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def _foreign_cases(tmp_path: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    """OUT paths that are not ours to replace, with the files that must survive."""
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "edgecpm.json").write_text("{not json")
    (broken / "model.bin").write_text("someone's")
    return {
        "foreign_folder": (folder, {"thesis.tex": "precious"}),
        "file": (file, {}),
        "unreadable_manifest": (broken, {"edgecpm.json": "{not json", "model.bin": "someone's"}),
    }


@pytest.mark.parametrize("fmt", ["gguf", "onnx", "executorch"])
def test_foreign_outputs_are_refused_and_left_intact(fmt: str, tiny_tied: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip(IMPORTS[fmt])
    cases = _foreign_cases(tmp_path)
    other = {"gguf": "onnx", "onnx": "executorch", "executorch": "gguf"}[fmt]
    theirs = tmp_path / "other_format"
    theirs.mkdir()
    make_manifest(other, "x", preset_config("minicpm4-0.5b"), ["model.bin"], "sha256:0").write(theirs)
    cases["other_format_artifact"] = (theirs, {"edgecpm.json": (theirs / "edgecpm.json").read_text()})
    for name, (out, keep) in cases.items():
        before = out.read_text() if out.is_file() else None
        with pytest.raises(EdgecpmError, match="refusing to replace it|a file has that name") as info:
            edgecpm.export(tiny_tied, format=fmt, out=out, progress=False, **OPTIONS[fmt])
        assert "\n" not in str(info.value), name
        if before is not None:
            assert out.read_text() == before, name
        for f, text in keep.items():
            assert (out / f).read_text() == text, (name, f)
        if out.is_dir():
            assert sorted(p.name for p in out.iterdir()) == sorted(keep), name
    assert main(["export", str(tiny_tied), "--format", fmt, "--out", str(cases["foreign_folder"][0])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgecpm: error: ") and len(err.splitlines()) == 1
    assert _leftovers(tmp_path) == []


def test_single_file_gguf_replaces_only_its_own_file(tiny_tied: Path, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    foreign = tmp_path / "theirs.gguf"
    foreign.write_bytes(b"GGUF not ours")
    with pytest.raises(EdgecpmError, match="not an edgecpm gguf artifact"):
        edgecpm.export(tiny_tied, format="gguf", out=foreign, quant="f16", progress=False)
    assert foreign.read_bytes() == b"GGUF not ours"
    ours = tmp_path / "ours.gguf"
    edgecpm.export(tiny_tied, format="gguf", out=ours, quant="f16", progress=False)
    art = edgecpm.export(tiny_tied, format="gguf", out=ours, quant="q8_0", progress=False)
    assert art.path == art.model_file == ours
    assert json.loads((tmp_path / "ours.gguf.edgecpm.json").read_text())["quant"] == "q8_0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.gguf", "ours.gguf.edgecpm.json", "theirs.gguf"]


# ---- killing a real export ---------------------------------------------------------------------------------

# Runs `edgecpm export` with a pause at one moment (printing MOMENT first) so the test can signal it there:
# "writing" = while the first tensor is written, "before_swap" / "after_swap" = around the atomic exchange.
DRIVER = r"""
import os, sys, time
import edgecpm.exporters.gguf_exporter as g
import edgecpm.exporters.shell as s
moment = os.environ["MOMENT"]
def say():
    print("MOMENT", flush=True)
if moment == "writing":
    real = g._tensor_bytes
    def slow(*a, **k):
        say(); time.sleep(120); return real(*a, **k)
    g._tensor_bytes = slow
else:
    real_exchange = s._exchange
    def exchange(a, b):
        if moment == "before_swap":
            say(); time.sleep(2)
        done = real_exchange(a, b)
        if moment == "after_swap":
            say(); time.sleep(2)
        return done
    s._exchange = exchange
from edgecpm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _assert_complete(out: Path) -> str:
    """OUT is a whole artifact: manifest readable, the GGUF parses with every tensor, size as recorded."""
    import gguf

    m = read_manifest(out)
    model = out / m.model_files[0]
    assert model.stat().st_size == m.extra["file_bytes"]
    assert len(gguf.GGUFReader(str(model)).tensors) == sum(m.extra["tensor_types"].values())
    return m.quant


def _run_until_moment(src: Path, out: Path, moment: str, tmp_path: Path) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(driver),
            "export",
            str(src),
            "--format",
            "gguf",
            "--quant",
            "q8_0",
            "--out",
            str(out),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MOMENT": moment},
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready and proc.stdout.readline().strip() == "MOMENT":
            return proc
        assert proc.poll() is None, proc.stderr.read()
    proc.kill()
    raise AssertionError(f"export never reached {moment}")


# (signal, moment) -> which artifact OUT must hold afterwards (SIGINT/SIGTERM wait out the renames)
KILLS = {
    ("SIGTERM", "writing"): "old",
    ("SIGTERM", "before_swap"): "new",
    ("SIGTERM", "after_swap"): "new",
    ("SIGKILL", "writing"): "old",
    ("SIGKILL", "before_swap"): "old",
    ("SIGKILL", "after_swap"): "new",
}


@pytest.mark.parametrize("sig,moment", list(KILLS), ids=[f"{s}-{m}" for s, m in KILLS])
def test_killed_export_leaves_the_old_or_the_new_artifact(
    sig: str, moment: str, tiny_tied: Path, tmp_path: Path
) -> None:
    pytest.importorskip("gguf")
    out = tmp_path / "art"
    edgecpm.export(tiny_tied, format="gguf", out=out, quant="f16", progress=False)  # the old artifact
    proc = _run_until_moment(tiny_tied, out, moment, tmp_path)
    proc.send_signal(getattr(signal, sig))
    rc = proc.wait(timeout=120)
    expected = {"old": "f16", "new": "q8_0"}[KILLS[(sig, moment)]]
    assert _assert_complete(out) == expected
    if sig == "SIGTERM":
        assert rc == 143, proc.stderr.read()
        assert _leftovers(tmp_path) == []  # the handler ran the clean-up
    else:
        assert rc == -signal.SIGKILL
        # SIGKILL cannot be caught; the next export to OUT removes what the dead process left
        edgecpm.export(tiny_tied, format="gguf", out=out, quant="q4_0", progress=False)
        assert _assert_complete(out) == "q4_0"
        assert _leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "driver.py"]
