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

from ..config import ModelConfig
from ..errors import EdgecpmError

MANIFEST_NAME = "edgecpm.json"
FORMATS = ("gguf", "onnx", "executorch")
# the backend that runs each format by default
FORMAT_BACKENDS = {"gguf": "llama.cpp", "onnx": "onnxruntime", "executorch": "executorch"}


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
        return ModelConfig.from_dict(self.config)

    def write(self, directory: Path) -> Path:
        return write_json_atomic(Path(directory) / MANIFEST_NAME, asdict(self))


def make_manifest(fmt: str, quant: str, config: ModelConfig, model_files: list[str], source_checksum: str,
                  tokenizer_files: list[str] | None = None, **extra: Any) -> Manifest:
    from .. import __version__

    sparse = asdict(config.sparse) if config.sparse is not None else None
    return Manifest(fmt, quant, config.to_dict(), model_files, source_checksum, __version__,
                    tokenizer_files or [], sparse, dict(extra))


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST_NAME
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        m = Manifest(**d)
    except FileNotFoundError:
        raise EdgecpmError(f"{directory} is not an edgecpm artifact (no {MANIFEST_NAME})") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise EdgecpmError(f"{path} is malformed: {exc}") from None
    if m.format not in FORMATS:
        raise EdgecpmError(f"{path}: format {m.format!r}; expected one of {', '.join(FORMATS)}")
    return m


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def write_json_atomic(path: Path, data: Any) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def install_folder(tmp: Path, out: Path) -> None:
    """Put a finished temporary folder in place; an older folder at `out` is replaced only after success."""
    import shutil

    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
