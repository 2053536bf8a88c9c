"""Reading a user's JSON file (config.json, shards index, tokenizer files, edgecpm.json) as untrusted input.

One place turns every way such a file can be broken into `EdgecpmError`: unreadable, not UTF-8, not JSON,
nested deeper than the decoder's recursion limit, or holding the non-standard constants NaN / Infinity (which
Python's decoder accepts but no config may contain). Duplicate keys keep the last value, as every HF loader does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgecpm.errors import EdgecpmError


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json(data: bytes | str, label: str) -> Any:
    """Decode one JSON document; `label` names it in the error."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, (bytes, bytearray)) else data
        return json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise EdgecpmError(f"{label} is not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise EdgecpmError(f"{label} is nested too deeply to be a valid file") from None
    except ValueError as exc:  # JSONDecodeError and the rejected constants
        raise EdgecpmError(f"{label} is not valid JSON: {exc}") from None


def read_json(path: str | Path, label: str | None = None) -> Any:
    """Read and decode a JSON file; every failure is one `EdgecpmError` naming the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise EdgecpmError(f"cannot read {p}: {exc.strerror or exc}") from None
    return parse_json(data, label or str(p))


def safe_member(directory: str | Path, name: Any, what: str, *, follow_symlinks_out: bool = False) -> Path:
    """`directory / name` for a file name read from a manifest or index, refusing anything that could leave
    the folder: not a string, empty, absolute, with `..` or a separator, or (unless `follow_symlinks_out`) a
    symlink pointing outside. Source checkpoints allow such symlinks: the Hugging Face cache links every
    snapshot file to a blob outside the snapshot folder; edgecpm's own artifacts never contain them."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or Path(name).is_absolute()
    ):
        raise EdgecpmError(f"{what} {name!r} is not a plain file name inside {directory}")
    base = Path(directory)
    path = base / name
    try:
        present = path.is_symlink() or path.exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise EdgecpmError(f"{what} {name[:80]!r} is not a usable file name ({exc.strerror})") from None
    if present and not follow_symlinks_out:
        try:
            path.resolve(strict=False).relative_to(base.resolve())
        except (ValueError, OSError, RuntimeError):
            raise EdgecpmError(f"{what} {name!r} points outside {directory}") from None
    return path
