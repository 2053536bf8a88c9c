"""`edgecpm` command line. Subcommands live in `edgecpm.commands` (one module each, discovered here).

Bad input prints one line `edgecpm: error: ...` and exits 2, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands
from .errors import EdgecpmError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgecpm", description="Export, run and profile MiniCPM4-family models "
                                     "on edge devices.")
    parser.add_argument("--version", action="version", version=f"edgecpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EdgecpmError as exc:
        print(f"edgecpm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgecpm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
