"""`edgecpm.json`: what an exported artifact is, so `edgecpm.load` and `edgecpm inspect` understand it.

Fields: format, quantization, the full `ModelConfig`, sparse-attention settings, the model file name(s), a
checksum of the source checkpoint and the tool version. Written atomically (temporary name, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecpm.config import ModelConfig
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.formats import EXPORT_FORMATS, FORMAT_BACKENDS  # noqa: F401 - FORMAT_BACKENDS re-exported for edgecpm.load
from edgecpm.jsonfile import read_json, safe_member

MANIFEST_NAME = "edgecpm.json"
FORMATS = EXPORT_FORMATS  # read from the format table, like the default backend of each (FORMAT_BACKENDS)


@dataclass
class Manifest:
    format: str
    quant: str
    config: dict[str, Any]
    model_files: list[str]
    source_checksum: str
    tool_version: str
    tokenizer_files: list[str] = field(default_factory=list)
    sparse: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_config(self) -> ModelConfig:
        try:
            return ModelConfig.from_dict(self.config)
        except EdgecpmError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgecpmError(f"{MANIFEST_NAME}: the stored config is malformed ({exc})") from None

    def write(self, directory: Path) -> Path:
        return write_json_atomic(Path(directory) / MANIFEST_NAME, asdict(self))


def make_manifest(
    fmt: str,
    quant: str,
    config: ModelConfig,
    model_files: list[str],
    source_checksum: str,
    tokenizer_files: list[str] | None = None,
    **extra: Any,
) -> Manifest:
    from edgecpm.version import __version__

    sparse = asdict(config.sparse) if config.sparse is not None else None
    return Manifest(
        fmt,
        quant,
        config.to_dict(),
        model_files,
        source_checksum,
        __version__,
        tokenizer_files or [],
        sparse,
        dict(extra),
    )


def read_manifest(directory: str | Path) -> Manifest:
    """Read and check an artifact's manifest: field types, the stored config, and that every file it names
    is a plain name inside the artifact folder (no `..`, absolute paths or symlinks leading out)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise EdgecpmError(f"{directory} is not an edgecpm artifact (no {MANIFEST_NAME})")
    d = read_json(path)
    if not isinstance(d, dict):
        raise EdgecpmError(f"{path} is malformed: expected a JSON object")
    try:
        m = Manifest(**d)
    except TypeError as exc:
        raise EdgecpmError(f"{path} is malformed: {exc}") from None
    if m.format not in FORMATS:
        raise EdgecpmError(f"{path}: format {m.format!r}; expected one of {', '.join(FORMATS)}")
    for key, kind in (
        ("quant", str),
        ("config", dict),
        ("model_files", list),
        ("source_checksum", str),
        ("tool_version", str),
        ("tokenizer_files", list),
        ("extra", dict),
    ):
        if not isinstance(getattr(m, key), kind):
            raise EdgecpmError(f"{path}: field '{key}' is malformed; expected {kind.__name__}")
    if m.sparse is not None and not isinstance(m.sparse, dict):
        raise EdgecpmError(f"{path}: field 'sparse' is malformed; expected an object or null")
    if not m.model_files:
        raise EdgecpmError(f"{path}: field 'model_files' is empty")
    for key in ("max_seq_len", "max_context_len"):  # sizes the runtimes allocate from
        v = m.extra.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 1 << 31):
            raise EdgecpmError(f"{path}: field 'extra.{key}' is {v!r}; expected a positive integer")
    for key in ("model_files", "tokenizer_files"):
        for name in getattr(m, key):
            safe_member(directory, name, f"{path} {key} entry")
    m.model_config  # noqa: B018 - checks the stored config once, here
    return m


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def write_json_atomic(path: Path, data: Any) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def source_checksum(paths: list[Path], max_bytes_per_file: int = 1 << 24) -> str:
    """SHA-256 over each source file's size, head and tail (fast on multi-GB checkpoints, still
    changes when a file is replaced or truncated)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        size = p.stat().st_size
        h.update(p.name.encode() + size.to_bytes(8, "little"))
        with p.open("rb") as f:
            h.update(f.read(max_bytes_per_file))
            if size > max_bytes_per_file:
                f.seek(max(size - max_bytes_per_file, max_bytes_per_file))
                h.update(f.read())
    return "sha256:" + h.hexdigest()
