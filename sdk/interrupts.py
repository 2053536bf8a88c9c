"""Signals and write faults as clean, one-line edgecpm exits.

SIGTERM is turned into `Terminated`, a `KeyboardInterrupt`, so every `finally` and staging clean-up that runs
on Ctrl-C also runs on `kill` (the CLI exits 143, Ctrl-C 130). A disk that is full, a file size limit, a
read-only file system or a folder without write permission end in `write_error`'s one line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecpm.errors import EdgecpmError


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (raised by the handler `termination_raises` installs); exit status 143."""

    exit_status = 128 + signal.SIGTERM


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def termination_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises `Terminated` in the main thread (elsewhere: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM that arrive inside the block (a few renames) are held and raised right after it.

    Done with Python-level handlers, not a thread signal mask: a process-directed signal is delivered to any
    thread that does not block it (torch starts several), and Python then runs the handler in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs signal handlers in the main thread only: nothing interrupts this one
        return
    pending: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if pending:
        handler = previous[pending[0]]
        if callable(handler):
            handler(pending[0], None)  # raises Terminated / ExportTerminated / KeyboardInterrupt
        elif handler == signal.SIG_DFL:
            signal.raise_signal(pending[0])


WRITE_FAULTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached (file too large)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


def write_error(exc: BaseException, target: Any) -> EdgecpmError | None:
    """The one-line error for an `OSError` a write got from the disk or the permissions; None for others."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno is None and _SHORT_WRITE.search(str(exc)):  # numpy's tofile: the disk took part of a block
        return EdgecpmError(f"cannot write {target}: a write was cut short, disk full or file size limit ({exc})")
    if exc.errno not in WRITE_FAULTS:
        return None
    return EdgecpmError(f"cannot write {target}: {WRITE_FAULTS[exc.errno]}{_where(exc, target)}")


def _where(exc: OSError, target: Any) -> str:
    """The file the write failed on, when it lies beside or inside `target` (copy errors can name the source)."""
    if not exc.filename:
        return ""
    failed, out = Path(os.path.abspath(os.fsdecode(exc.filename))), Path(os.path.abspath(target))
    return f" at {failed}" if failed != out and out.parent in failed.parents else ""


def nearest_folder(path: Path) -> Path:
    """`path` if it is a folder, else its nearest existing ancestor (where writing it would start)."""
    p = Path(os.path.abspath(path))
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


def check_writable(out: Any, writes_in: Any) -> None:
    """Refuse, before any work, an output `out` whose files go into a folder `writes_in` (or the nearest
    existing ancestor it would be created in) that cannot be written: read-only mount, no permission."""
    folder = nearest_folder(Path(writes_in))
    if not os.access(folder, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only_mount(folder) else "permission denied"
        raise EdgecpmError(f"cannot write {out}: {folder} is not writable ({why})")


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False
