"""The one export shell: open the source, check the model against the format table, let the format write its
files into a staging folder, write the manifest, install atomically.

Output policy (the same for every format and for Android bundles):

* OUT may be missing, an empty folder, or an edgecpm artifact of the same kind (its `edgecpm.json` says so);
  anything else (a foreign folder or file, another format's artifact) is refused with one line and left as is.
  edgecpm never deletes what it did not write.
* Files are written into `.<OUT>.edgecpm-tmp-<pid>` beside OUT and installed by rename: onto a missing OUT by
  `rename`, over an existing one by Linux `renameat2(RENAME_EXCHANGE)`, so at every moment OUT is either the
  old or the new complete artifact (where the kernel or filesystem lacks the exchange, two renames are used and
  a kill between them leaves the old artifact beside OUT as `.<OUT>.edgecpm-old-<pid>`).
* On any error, Ctrl-C (the CLI exits 130) or SIGTERM (the CLI's handler raises `interrupts.Terminated`, exit
  status 143; API callers without a SIGTERM handler get `ExportTerminated`) the staging folder is removed; a
  full disk, a file size limit or a read-only folder is one `EdgecpmError` naming OUT. A staging folder left
  by a killed process (SIGKILL) is removed by the next export to the same OUT.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecpm.config import ModelConfig
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.artifact import Artifact
from edgecpm.exporters.formats import FormatFacts, check_exportable
from edgecpm.exporters.manifest import MANIFEST_NAME, Manifest, make_manifest, read_manifest, source_checksum
from edgecpm.interrupts import check_writable, signals_deferred, write_error

TMP_TAG, OLD_TAG = ".edgecpm-tmp-", ".edgecpm-old-"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


class ExportTerminated(SystemExit):
    """Raised by the SIGTERM handler during an export so the staging folder is removed; exit status 143."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


@dataclass
class ExportJob:
    """Everything a format's `prepare` / `write` needs; `model_name` is the main model file's name."""

    src: Path
    config: ModelConfig
    source: Any
    quant: str
    options: dict[str, Any]
    progress: bool
    model_name: str


@dataclass
class Written:
    """What a format wrote into the staging folder (names relative to it) and its manifest extras."""

    model_files: list[str]
    tokenizer_files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def source_files(src: Path) -> list[Path]:
    """The one checksum rule: a file is itself; a folder is its weight files plus config.json."""
    if src.is_file():
        return [src]
    files = [p for p in src.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")]
    return files or [p for p in src.iterdir() if p.is_file()]


def run(
    module: Any, facts: FormatFacts, src: Any, out: Any, quant: str, options: dict[str, Any], progress: bool
) -> Artifact:
    """Export `src` with the format `module` (quant and options already checked by the registry)."""
    from edgecpm.weights import open_checkpoint

    src_path, out_path = Path(src), Path(out)
    if not src_path.exists():
        raise EdgecpmError(f"source checkpoint not found: {src_path}")
    single = facts.single_file_suffix is not None and out_path.suffix == facts.single_file_suffix
    staged = StagedOutput(out_path, facts.name, single_file=single)
    ode = {"ode_steps": options["ode_steps"]} if options.get("ode_steps") is not None else {}
    config, source = open_checkpoint(src_path, **ode)
    check_exportable(config, facts.name, quant, options, source)
    job = ExportJob(src_path, config, source, quant, options, progress, out_path.name if single else module.MODEL_FILE)
    prepared = module.prepare(job)
    with staged as stage:
        written = module.write(job, prepared, stage)
        manifest = make_manifest(
            facts.name,
            quant,
            config,
            written.model_files,
            source_checksum(source_files(src_path)),
            written.tokenizer_files,
            **written.extra,
        )
        return staged.install(manifest)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StagedOutput:
    """A staging folder beside `out`, installed atomically by `install`, removed on any failure.

    `accepts(manifest)` says whether an existing artifact at `out` may be replaced (default: same format).
    """

    def __init__(
        self,
        out: Path,
        fmt: str,
        *,
        single_file: bool = False,
        accepts: Callable[[Manifest], bool] | None = None,
        what: str | None = None,
    ) -> None:
        self.out, self.fmt, self.single_file = out, fmt, single_file
        self.accepts = accepts or (lambda m: m.format == fmt)
        self.what = what or f"edgecpm {fmt} artifact"
        self.sidecar = out.with_name(out.name + "." + MANIFEST_NAME)
        self.dir = out.parent / f".{out.name}{TMP_TAG}{os.getpid()}"
        self._previous_handler: Any = None
        self.check_target()

    # ---- policy -------------------------------------------------------------------------------------------
    def check_target(self) -> None:
        out, parent = self.out, self.out.parent
        if not parent.is_dir():
            why = "is a file" if parent.exists() else "does not exist"
            raise EdgecpmError(f"cannot write {out}: folder {parent} {why}")
        check_writable(out, parent)  # the staging folder and the renames happen in OUT's parent
        if self.single_file:
            if out.is_dir():
                raise EdgecpmError(f"cannot write {out}: it is a folder")
            if out.exists() and not self._replaceable(self.sidecar, out.parent):
                raise EdgecpmError(
                    f"output {out} exists and is not an {self.what} (no {self.sidecar.name}); refusing to replace it"
                )
            return
        if not out.exists():
            return
        if not out.is_dir():
            raise EdgecpmError(f"cannot write artifact folder {out}: a file has that name")
        if not any(out.iterdir()):
            return
        if not (out / MANIFEST_NAME).is_file():
            raise EdgecpmError(
                f"output folder {out} is not empty and is not an edgecpm artifact; refusing to replace it"
            )
        if not self._replaceable(out / MANIFEST_NAME, out):
            raise EdgecpmError(
                f"output folder {out} is not an {self.what}; refusing to replace it "
                "(remove it or choose another output)"
            )

    def _replaceable(self, manifest_path: Path, folder: Path) -> bool:
        if not manifest_path.is_file():
            return False
        try:
            if manifest_path.name == MANIFEST_NAME:
                return self.accepts(read_manifest(folder))
            import json

            return self.accepts(Manifest(**json.loads(manifest_path.read_text(encoding="utf-8"))))
        except (EdgecpmError, ValueError, TypeError, OSError):
            return False

    def _remove_stale(self) -> None:
        """Staging/old folders of this OUT left by processes that were killed (SIGKILL)."""
        for tag in (TMP_TAG, OLD_TAG):
            for p in self.out.parent.glob(f".{self.out.name}{tag}*"):
                pid = p.name.rsplit("-", 1)[-1]
                if pid.isdigit() and not _is_alive(int(pid)):
                    shutil.rmtree(p, ignore_errors=True)

    # ---- staging ------------------------------------------------------------------------------------------
    def __enter__(self) -> Path:
        self._remove_stale()
        try:  # `with` calls __exit__ only once __enter__ has returned: a signal in here cleans up itself
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir()
            main = threading.current_thread() is threading.main_thread()
            if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                self._previous_handler = signal.signal(signal.SIGTERM, _terminate)
        except BaseException as exc:
            self.__exit__(type(exc), None, None)
            if isinstance(exc, OSError):
                raise write_error(exc, self.out) or EdgecpmError(
                    f"cannot write to {self.out.parent}: {exc.strerror or exc}"
                ) from None
            raise
        return self.dir

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            shutil.rmtree(self.dir, ignore_errors=True)
        finally:
            if self._previous_handler is not None:
                signal.signal(signal.SIGTERM, self._previous_handler)
                self._previous_handler = None
        fault = write_error(exc, self.out) if exc is not None else None
        if fault is not None:  # disk full, file size limit, read-only: one line naming OUT
            raise fault from None

    def install(self, manifest: Manifest | None) -> Artifact | None:
        """Write `manifest` (None: the caller wrote edgecpm.json) and put the staging folder in place."""
        if manifest is not None:
            manifest.write(self.dir)
        with signals_deferred():
            self.check_target()  # the target could have changed while we wrote
            if self.single_file:
                os.replace(self.dir / self.out.name, self.out)
                os.replace(self.dir / MANIFEST_NAME, self.sidecar)
            else:
                install_folder(self.dir, self.out)
        if manifest is None:
            return None
        model = self.out if self.single_file else self.out / manifest.model_files[0]
        return Artifact(self.out, model, manifest)


def _terminate(signum: int, frame: Any) -> None:
    raise ExportTerminated()


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def install_folder(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out`; an existing `out` is swapped out in one step, then removed."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old artifact
        return
    old = out.with_name(f".{out.name}{OLD_TAG}{os.getpid()}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
