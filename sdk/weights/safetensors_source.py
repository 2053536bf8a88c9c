"""Safetensors checkpoints (single file or sharded with `model.safetensors.index.json`).

The header is parsed here (it is a small JSON block) and each tensor is read through its own short-lived
memory map, copied once into a tensor the caller owns, then unmapped. This keeps peak memory at one model
copy plus one tensor, detects truncated shards before anything is read, and never unpickles anything.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecpm.config import ModelConfig
from edgecpm.errors import EdgecpmError, WeightError
from edgecpm.jsonfile import parse_json, read_json, safe_member

_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F64": (torch.float64, 8),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_safetensors_header(path: Path) -> dict[str, _Entry]:
    """Parse one file's header and check that every tensor's bytes are really in the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise WeightError(f"{path.name} is truncated: no safetensors header")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(size - 8, 100_000_000):
                raise WeightError(f"{path.name} is not a safetensors file (header length {header_len})")
            raw_header = f.read(header_len)
    except OSError as exc:
        raise WeightError(f"cannot read {path}: {exc.strerror}") from None
    try:
        header = parse_json(raw_header, f"{path.name}'s safetensors header")
    except EdgecpmError as exc:
        raise WeightError(f"{path.name} has a corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise WeightError(f"{path.name} has a corrupt safetensors header")
    base = 8 + header_len
    entries: dict[str, _Entry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, itemsize = _DTYPES[info["dtype"]]
            shape = tuple(_header_int(x) for x in info["shape"])
            begin, end = (_header_int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise WeightError(f"{path.name}: tensor {name!r} has a malformed or unsupported header entry") from None
        if any(x < 0 for x in shape) or not 0 <= begin <= end:
            raise WeightError(f"{path.name}: tensor {name!r} has a negative dimension or byte offset")
        if end - begin != itemsize * math.prod(shape):  # exact integers: a huge shape cannot wrap around
            raise WeightError(f"{path.name}: tensor {name!r} byte range does not match its shape {list(shape)}")
        if base + end > size:
            raise WeightError(
                f"{path.name} is truncated: tensor {name!r} needs bytes up to {base + end}, file has {size}"
            )
        entries[name] = _Entry(path, dtype, shape, base + begin, end - begin)
    return entries


def _header_int(x: object) -> int:
    """A JSON integer (not a bool, float or string that merely converts to one)."""
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{x!r} is not an integer")
    return x


class SafetensorsSource:
    """Lazy tensors from one or more safetensors files."""

    def __init__(self, files: list[Path]) -> None:
        self._entries: dict[str, _Entry] = {}
        for file in files:
            if not file.exists():
                raise WeightError(f"weight shard missing: {file}")
            self._entries.update(read_safetensors_header(file))
        self.files = files

    @classmethod
    def from_dir(cls, directory: Path) -> SafetensorsSource:
        index = directory / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = read_json(index, index.name)["weight_map"]
            except EdgecpmError as exc:
                raise WeightError(str(exc)) from None
            except (KeyError, TypeError):
                raise WeightError(f"{index.name} is malformed: expected a 'weight_map' object") from None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise WeightError(f"{index.name} is malformed: 'weight_map' must map tensor names to shard files")
            files = [
                safe_member(directory, f, f"{index.name} shard", follow_symlinks_out=True)  # HF cache links
                for f in dict.fromkeys(weight_map.values())
            ]
            source = cls(files)
            missing = [n for n in weight_map if n not in source._entries]
            if missing:
                raise WeightError(f"{index.name} lists tensor {missing[0]!r} but no shard contains it")
            return source
        single = directory / "model.safetensors"
        if single.exists():
            return cls([single])
        shards = sorted(directory.glob("*.safetensors"))
        if shards:
            return cls(shards)
        if list(directory.glob("*.bin")) or list(directory.glob("*.pt")):
            raise WeightError(
                f"{directory} holds only pickle weights (.bin/.pt); edgecpm reads safetensors only "
                "(it never unpickles checkpoint files)"
            )
        raise WeightError(f"no safetensors weights in {directory}")

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self._entry(name).dtype

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def get(self, name: str) -> torch.Tensor:
        entry = self._entry(name)
        out = torch.empty(entry.shape, dtype=entry.dtype)
        if entry.nbytes == 0:
            return out
        page = mmap.ALLOCATIONGRANULARITY
        aligned = entry.start - entry.start % page
        skip = entry.start - aligned
        with (
            entry.file.open("rb") as f,
            mmap.mmap(f.fileno(), skip + entry.nbytes, offset=aligned, access=mmap.ACCESS_READ) as mm,
        ):
            src = np.frombuffer(mm, dtype=np.uint8, count=entry.nbytes, offset=skip)
            try:
                out.view(torch.uint8).reshape(-1).numpy()[:] = src
            finally:  # the view must go before the map closes, also when Ctrl-C/SIGTERM interrupts the copy
                del src  # (else closing the map raises BufferError over the interrupt)
        return out

    def check_against(self, config: ModelConfig) -> None:
        """Shape-check every tensor the config implies, so a mismatch is one clear error up front."""
        for name, shape in expected_shapes(config).items():
            if name not in self._entries:
                raise WeightError(f"tensor {name!r} is missing from the checkpoint")
            if self._entries[name].shape != shape:
                raise WeightError(
                    f"tensor {name!r} has shape {list(self._entries[name].shape)}; config implies {list(shape)}"
                )

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise WeightError(f"tensor {name!r} is not in the checkpoint") from None


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical HF tensor names and shapes implied by a config (shared layers appear once)."""
    h, i, hd = config.hidden_size, config.intermediate_size, config.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, h),
        "model.norm.weight": (h,),
    }
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    for spec in config.layers:
        p = f"model.layers.{spec.weight_layer}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (i, h)
        shapes[p + "mlp.up_proj.weight"] = (i, h)
        shapes[p + "mlp.down_proj.weight"] = (h, i)
        if spec.attention == "lightning" and config.lightning is not None:
            lc = config.lightning
            inner = lc.num_heads * lc.head_dim
            shapes[p + "self_attn.q_proj.weight"] = (inner, h)
            shapes[p + "self_attn.k_proj.weight"] = (lc.num_kv_heads * lc.head_dim, h)
            shapes[p + "self_attn.v_proj.weight"] = (lc.num_kv_heads * lc.head_dim, h)
            shapes[p + "self_attn.o_proj.weight"] = (h, inner)
            if lc.qk_norm:
                shapes[p + "self_attn.q_norm.weight"] = (lc.head_dim,)
                shapes[p + "self_attn.k_norm.weight"] = (lc.head_dim,)
            if lc.output_norm:
                shapes[p + "self_attn.o_norm.weight"] = (inner,)
            if lc.output_gate:
                shapes[p + "self_attn.z_proj.weight"] = (inner, h)
        else:
            shapes[p + "self_attn.q_proj.weight"] = (config.num_heads * hd, h)
            shapes[p + "self_attn.k_proj.weight"] = (config.num_kv_heads * hd, h)
            shapes[p + "self_attn.v_proj.weight"] = (config.num_kv_heads * hd, h)
            shapes[p + "self_attn.o_proj.weight"] = (h, config.num_heads * hd)
            if spec.output_gate:
                shapes[p + "self_attn.o_gate.weight"] = (config.num_heads * hd, h)
    return shapes
