"""`edgecpm` command line. Subcommands live in `edgecpm.commands` (one module each, discovered here).

Bad input prints one line `edgecpm: error: ...` and exits 2, with no traceback; so does a missing optional
dependency (the line names the extra that installs it), and so does a write the disk or the permissions refuse
(full, file size limit, read-only). Ctrl-C exits 130 and SIGTERM 143, after one line and every clean-up.
Anything else is a bug: one line `edgecpm: internal error: ...` naming the log file that holds the full
traceback, exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
import time
import traceback
from pathlib import Path

from edgecpm import commands
from edgecpm.errors import EdgecpmError
from edgecpm.interrupts import Terminated, termination_raises, write_error
from edgecpm.optional import missing_dependency
from edgecpm.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecpm", description="Export, run and profile MiniCPM4-family models on edge devices."
    )
    parser.add_argument("--version", action="version", version=f"edgecpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        if argv is None:  # run as the `edgecpm` program: the work is done (or cleaned up), so a signal that
            for s in (signal.SIGINT, signal.SIGTERM):  # comes during interpreter shutdown ends the process
                signal.signal(s, signal.SIG_DFL)  # at once (status 130/143 in a shell), not in a traceback


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with termination_raises():  # SIGTERM unwinds like Ctrl-C: every clean-up runs
            return int(args.func(args) or 0)
    except EdgecpmError as exc:
        print(f"edgecpm: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("edgecpm: terminated", file=sys.stderr)
        return Terminated.exit_status
    except KeyboardInterrupt:
        print("edgecpm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        fault = write_error(exc, exc.filename or "the output")
        if fault is None:
            return _internal_error(exc, argv)
        print(f"edgecpm: error: {fault}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"edgecpm: error: {missing_dependency(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: one line for the user, the traceback in a log file
        return _internal_error(exc, argv)


def _internal_error(exc: Exception, argv: list[str] | None) -> int:
    log = write_crash_log(argv if argv is not None else sys.argv[1:])
    where = f"; full log: {log}" if log else ""
    print(f"edgecpm: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}{where}", file=sys.stderr)
    return 1


def crash_log_dir() -> Path:
    return Path(os.environ.get("EDGECPM_LOG_DIR") or Path.home() / ".cache" / "edgecpm" / "logs")


def write_crash_log(argv: list[str]) -> Path | None:
    """The current exception's traceback, with the command line and versions, in a new file under the log dir."""
    try:
        folder = crash_log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(
            f"edgecpm {__version__}, python {sys.version.split()[0]}\nargv: {argv}\n\n{traceback.format_exc()}",
            encoding="utf-8",
        )
        return path
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
