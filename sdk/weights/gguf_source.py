"""GGUF files (`minicpm` and `llama` architectures) as a `WeightSource` in Hugging Face names.

Tensors are dequantized with `gguf.quants` to float32 on demand and llama.cpp's q/k row permutation
(interleaved rotary pairs) is undone, so the reference model sees exactly the HF layout. The config is
rebuilt from the GGUF metadata: the three MiniCPM scalings, LongRoPE factor tensors, tying, special ids and
edgecpm's own `<arch>.infllm_v2.*` block for sparse attention. A file of edgecpm's own architecture (models
llama.cpp cannot run, e.g. MiniCPM-SALA) carries its whole config as JSON and its tensors unpermuted.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecpm.config import LayerSpec, ModelConfig, RopeScaling, SparseConfig
from edgecpm.errors import ConfigError, EdgecpmError, WeightError
from edgecpm.exporters.formats import EDGECPM_GGUF_ARCH as EDGECPM_ARCH

SUPPORTED_GGUF_ARCHITECTURES = ("minicpm", "llama", EDGECPM_ARCH)

# GGUF tensor name (per block, after "blk.N.") -> HF name (after "model.layers.N.")
BLOCK_TENSOR_NAMES: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_TENSOR_NAMES: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# GGUF metadata key suffix -> SparseConfig field (edgecpm's namespaced block; llama.cpp ignores it)
INFLLM_KEY_PREFIX = "infllm_v2."
SHARED_LAYERS_KEY = "edgecpm.weight_layers"  # per block: the block whose weights it uses (shared-layer models)
CONFIG_JSON_KEY = "edgecpm.config"  # edgecpm's own architecture: `ModelConfig.to_dict()` as JSON
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_to_gguf_name(hf_name: str, generic: bool = False) -> str:
    """Inverse of the GGUF -> HF mapping (used by the GGUF exporter). `generic`: a block tensor without a
    llama.cpp name becomes `blk.N.<its HF name within the layer>` (edgecpm's own architecture)."""
    for g, h in GLOBAL_TENSOR_NAMES.items():
        if hf_name == h:
            return g
    m = re.match(r"^model\.layers\.(\d+)\.(.+)$", hf_name)
    if m:
        for g, h in BLOCK_TENSOR_NAMES.items():
            if m.group(2) == h:
                return f"blk.{m.group(1)}.{g}"
        if generic:
            return f"blk.{m.group(1)}.{m.group(2)}"
    raise WeightError(f"tensor {hf_name!r} has no GGUF name for the minicpm architecture")


def permute_for_llamacpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF half-split rotary rows -> llama.cpp interleaved pairs (LLAMA_ROPE_TYPE_NORM)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_from_llamacpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `permute_for_llamacpp`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field_value(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types
_STRING, _ARRAY = 8, 9
MAX_TENSOR_DIMS = 4  # GGML_MAX_DIMS


def check_gguf_layout(path: Path) -> None:
    """Bounds-check a GGUF file's header before gguf-py reads it, as llama.cpp's loader does.

    gguf-py trusts every count: an array or string claiming 10^12 items makes it loop or slice for ever, and a
    tensor offset past the end yields a short view. Here every length is checked against the bytes left, every
    type code against the known ones, and every tensor's data range against the file size.
    """
    import mmap
    import struct

    import gguf

    name = path.name
    try:
        f = path.open("rb")
    except OSError as exc:
        raise WeightError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        size = path.stat().st_size
        if size < 24:
            raise WeightError(f"{name} is not a GGUF file (only {size} bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[:4] != b"GGUF":
                raise WeightError(f"{name} is not a GGUF file (bad magic)")
            end = "<" if struct.unpack_from("<I", mm, 4)[0] & 0xFFFF else ">"
            pos = 4

            def take(fmt: str) -> int:
                nonlocal pos
                n = struct.calcsize(fmt)
                if pos + n > size:
                    raise WeightError(f"{name} is truncated (header ends at byte {size})")
                (v,) = struct.unpack_from(end + fmt, mm, pos)
                pos += n
                return v

            def skip(n: int, what: str) -> None:
                nonlocal pos
                if n > size - pos:
                    raise WeightError(f"{name}: {what} claims {n} bytes but only {size - pos} remain")
                pos += n

            def string(what: str) -> bytes:
                n = take("Q")
                start = pos
                skip(n, what)
                return mm[start:pos]

            def value(vtype: int, what: str, depth: int = 0) -> None:
                if vtype in _SCALAR_SIZES:
                    skip(_SCALAR_SIZES[vtype], what)
                elif vtype == _STRING:
                    string(what)
                elif vtype == _ARRAY and depth == 0:
                    itype, count = take("I"), take("Q")
                    if itype in _SCALAR_SIZES:
                        skip(count * _SCALAR_SIZES[itype], what)
                    elif itype in (_STRING, _ARRAY):
                        if count * 8 > size - pos:  # every item needs at least its 8-byte length
                            raise WeightError(f"{name}: {what} claims {count} items but only {size - pos} bytes remain")
                        for _ in range(count):
                            value(itype, what, depth + 1)
                    else:
                        raise WeightError(f"{name}: {what} has unknown array item type {itype}")
                else:
                    raise WeightError(f"{name}: {what} has unknown value type {vtype}")

            version = take("I")
            if version not in (2, 3):
                raise WeightError(f"{name}: GGUF version {version} is not supported (expected 2 or 3)")
            n_tensors, n_kv = take("Q"), take("Q")
            if n_kv > size or n_tensors > size:
                raise WeightError(f"{name}: header claims {n_kv} metadata keys and {n_tensors} tensors")
            alignment = 32
            for i in range(n_kv):
                key = string(f"metadata key {i}")
                vtype = take("I")
                label = f"metadata {key[:60].decode('utf-8', 'replace')!r}"
                if key == b"general.alignment" and vtype == 4:
                    alignment = take("I")
                    if alignment == 0 or alignment & (alignment - 1):
                        raise WeightError(f"{name}: general.alignment {alignment} is not a power of two")
                else:
                    value(vtype, label)
            tensors = []
            for i in range(n_tensors):
                tname = string(f"tensor {i} name").decode("utf-8", "replace")
                n_dims = take("I")
                if not 1 <= n_dims <= MAX_TENSOR_DIMS:
                    raise WeightError(f"{name}: tensor {tname!r} has {n_dims} dimensions")
                dims = [take("Q") for _ in range(n_dims)]
                ttype, offset = take("I"), take("Q")
                try:
                    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
                except (ValueError, KeyError):
                    raise WeightError(f"{name}: tensor {tname!r} has unknown type {ttype}") from None
                n = math.prod(dims)
                if n == 0 or n > 1 << 50 or dims[0] % block:
                    raise WeightError(f"{name}: tensor {tname!r} has impossible shape {dims}")
                tensors.append((tname, offset, n * type_size // block))
            data_start = pos + (-pos % alignment)
            for tname, offset, nbytes in tensors:
                if offset % alignment or data_start + offset + nbytes > size:
                    raise WeightError(
                        f"{name} is truncated or corrupt: tensor {tname!r} needs bytes "
                        f"{data_start + offset}..{data_start + offset + nbytes}, file has {size}"
                    )


class GGUFSource:
    """Dequantizing, name-mapping view of one GGUF file."""

    def __init__(self, path: str | Path) -> None:
        import gguf

        self.path = Path(path)
        try:
            check_gguf_layout(self.path)
        except WeightError as exc:
            detail = str(exc).removeprefix(f"{self.path.name}: ").removeprefix(f"{self.path.name} ")
            raise WeightError(f"{self.path.name} is not a valid GGUF file ({detail})") from None
        try:
            self.reader = gguf.GGUFReader(str(self.path))
        except Exception as exc:  # the reader raises ValueError, struct.error, IndexError... on bad bytes
            raise WeightError(f"{self.path.name} is not a valid GGUF file ({type(exc).__name__}: {exc})") from None
        self.arch = field_value(self.reader, "general.architecture")
        if self.arch not in SUPPORTED_GGUF_ARCHITECTURES:
            raise ConfigError(
                f"GGUF architecture {self.arch!r} is not supported; expected one of "
                f"{', '.join(SUPPORTED_GGUF_ARCHITECTURES)}"
            )
        self._tensors = {t.name: t for t in self.reader.tensors}
        self._hf_to_gguf: dict[str, str] = {}
        for gname in self._tensors:
            hf = self._to_hf(gname, generic=self.arch == EDGECPM_ARCH)
            if hf is not None:
                self._hf_to_gguf[hf] = gname
        try:
            self.config = self._build_config()
        except (TypeError, ValueError, OverflowError, ZeroDivisionError, IndexError, UnicodeDecodeError) as exc:
            if isinstance(exc, EdgecpmError):
                raise
            raise ConfigError(f"{self.path.name} has malformed model metadata ({type(exc).__name__}: {exc})") from None
        self._check_tensor_sizes()

    # ---- WeightSource ----
    def names(self) -> list[str]:
        return list(self._hf_to_gguf)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(x) for x in reversed(self._tensor(name).shape))

    def dtype(self, name: str) -> torch.dtype:
        return torch.float32

    def __contains__(self, name: object) -> bool:
        return name in self._hf_to_gguf

    def total_bytes(self) -> int:
        return sum(int(t.n_bytes) for t in self._tensors.values())

    def get(self, name: str) -> torch.Tensor:
        return torch.from_numpy(self.get_numpy(name))

    def get_numpy(self, name: str) -> np.ndarray:
        import gguf

        t = self._tensor(name)
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise WeightError(
                f"{self.path.name}: tensor {t.name} has type {t.tensor_type.name}, which gguf.quants cannot dequantize"
            ) from None
        try:
            arr = np.asarray(arr, dtype=np.float32).reshape(self.shape(name))
            if self.arch == EDGECPM_ARCH:
                pass  # written in HF row order
            elif name.endswith("self_attn.q_proj.weight"):
                arr = unpermute_from_llamacpp(arr, self.config.num_heads)
            elif name.endswith("self_attn.k_proj.weight"):
                arr = unpermute_from_llamacpp(arr, self.config.num_kv_heads)
        except ValueError as exc:  # a shape that does not fit the heads the metadata declares
            raise WeightError(
                f"{self.path.name}: tensor {t.name} has shape {list(self.shape(name))}, which does "
                f"not fit the model metadata ({exc})"
            ) from None
        return (
            np.array(arr, dtype=np.float32, order="C", copy=True)
            if not arr.flags.writeable
            else np.ascontiguousarray(arr)
        )

    def quant_type(self, name: str) -> str:
        return self._tensor(name).tensor_type.name

    def file_type_name(self) -> str:
        types = [t.tensor_type.name for t in self._tensors.values() if len(t.shape) > 1]
        return max(set(types), key=types.count) if types else "F32"

    # ---- internals ----
    def _tensor(self, name: str) -> Any:
        try:
            return self._tensors[self._hf_to_gguf[name]]
        except KeyError:
            raise WeightError(f"tensor {name!r} is not in {self.path.name}") from None

    @staticmethod
    def _to_hf(gname: str, generic: bool = False) -> str | None:
        if gname in GLOBAL_TENSOR_NAMES:
            return GLOBAL_TENSOR_NAMES[gname]
        m = _BLOCK_RE.match(gname)
        if m and m.group(2) in BLOCK_TENSOR_NAMES:
            return f"model.layers.{m.group(1)}.{BLOCK_TENSOR_NAMES[m.group(2)]}"
        if m and generic:
            return f"model.layers.{m.group(1)}.{m.group(2)}"
        return None  # rope factor tensors are metadata, read into the config

    def _meta(self, key: str, default: Any = ...) -> Any:
        value = field_value(self.reader, f"{self.arch}.{key}")
        if value is None:
            if default is ...:
                raise ConfigError(f"GGUF metadata key '{self.arch}.{key}' is missing")
            return default
        return value

    def _check_tensor_sizes(self) -> None:
        for name in ("model.embed_tokens.weight", "model.norm.weight"):
            if name not in self:
                raise WeightError(f"{self.path.name} has no tensor for {name!r}")
        if self.arch == EDGECPM_ARCH:
            return  # each layer kind has its own tensors: the model checks each one's name and shape as it loads
        for i in range(self.config.num_layers):
            for hf in BLOCK_TENSOR_NAMES.values():
                if f"model.layers.{i}.{hf}" not in self:
                    raise WeightError(f"{self.path.name} is missing tensor blk.{i} {hf}")

    def _build_config(self) -> ModelConfig:
        if self.arch == EDGECPM_ARCH:
            return self._stored_config()
        n_layers = int(self._meta("block_count"))
        hidden = int(self._meta("embedding_length"))
        n_head = int(self._meta("attention.head_count"))
        n_kv = int(self._meta("attention.head_count_kv", n_head))
        head_dim = int(self._meta("attention.key_length", hidden // n_head))
        for key, v in (
            ("block_count", n_layers),
            ("embedding_length", hidden),
            ("attention.head_count", n_head),
            ("attention.head_count_kv", n_kv),
            ("attention.key_length", head_dim),
        ):
            if not 0 < v <= (len(self._tensors) if key == "block_count" else 1 << 32):
                raise ConfigError(
                    f"GGUF metadata key '{self.arch}.{key}' is {v}; expected a positive count"
                    + (" no larger than the number of tensors" if key == "block_count" else "")
                )
        emb = self._tensors.get("token_embd.weight")
        if emb is None:
            raise WeightError(f"{self.path.name} has no token_embd.weight tensor")
        vocab = int(emb.shape[1])
        if self.arch == "minicpm":
            scale_emb = float(self._meta("embedding_scale"))
            scale_depth = float(self._meta("residual_scale")) * math.sqrt(n_layers)
            dim_model_base = hidden / float(self._meta("logit_scale"))
        else:
            scale_emb, scale_depth, dim_model_base = 1.0, math.sqrt(n_layers), hidden
        for key, v in (
            ("embedding_scale", scale_emb),
            ("residual_scale", scale_depth),
            ("logit_scale", dim_model_base),
        ):
            if not 0 < v < 1e300:  # also NaN and inf
                raise ConfigError(f"GGUF metadata key '{self.arch}.{key}' gives {v}; expected a positive finite number")
        ctx = int(self._meta("context_length", 4096))
        rope_scaling = None
        long_t = self._tensors.get("rope_factors_long.weight")
        short_t = self._tensors.get("rope_factors_short.weight")
        freqs_t = self._tensors.get("rope_freqs.weight")
        if long_t is not None or short_t is not None:
            if long_t is None or short_t is None:
                raise WeightError(f"{self.path.name} has only one of rope_factors_long/short")
            rope_scaling = RopeScaling(
                "longrope",
                tuple(float(x) for x in np.asarray(long_t.data).ravel()),
                tuple(float(x) for x in np.asarray(short_t.data).ravel()),
                ctx,
            )
        elif freqs_t is not None:
            f = tuple(float(x) for x in np.asarray(freqs_t.data).ravel())
            rope_scaling = RopeScaling("longrope", f, f, ctx)
        sparse = self._read_sparse()
        kind = "infllmv2" if sparse is not None else "dense"
        eos = self._eos_ids()
        bos = field_value(self.reader, "tokenizer.ggml.bos_token_id")
        return ModelConfig(
            architecture="minicpm" if self.arch == "minicpm" else "llama",
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=int(self._meta("feed_forward_length")),
            num_layers=n_layers,
            num_heads=n_head,
            num_kv_heads=n_kv,
            head_dim=head_dim,
            max_position_embeddings=ctx,
            rms_norm_eps=float(self._meta("attention.layer_norm_rms_epsilon")),
            rope_theta=float(self._meta("rope.freq_base", 10000.0)),
            scale_emb=scale_emb,
            scale_depth=scale_depth,
            dim_model_base=dim_model_base,
            tie_word_embeddings="output.weight" not in self._tensors,
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=eos,
            layers=tuple(LayerSpec(kind, w) for w in self._weight_layers(n_layers)),
            rope_scaling=rope_scaling,
            sparse=sparse,
            torch_dtype="float32",
            name=str(field_value(self.reader, "general.name", self.path.stem)),
        )

    def _stored_config(self) -> ModelConfig:
        """edgecpm's own architecture: the config the exporter stored whole, checked like a manifest's."""
        from dataclasses import replace

        text = self._meta(CONFIG_JSON_KEY)
        if not isinstance(text, str):
            raise ConfigError(f"GGUF metadata key '{self.arch}.{CONFIG_JSON_KEY}' is not a string")
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"GGUF metadata key '{self.arch}.{CONFIG_JSON_KEY}' is not JSON ({exc})") from None
        try:
            config = ModelConfig.from_dict(d)
        except ConfigError as exc:
            raise ConfigError(f"{self.path.name}: the stored {CONFIG_JSON_KEY} is malformed ({exc})") from None
        emb = self._tensors.get("token_embd.weight")
        if emb is None:
            raise WeightError(f"{self.path.name} has no token_embd.weight tensor")
        if int(emb.shape[1]) != config.vocab_size:
            raise ConfigError(
                f"{self.path.name}: token_embd.weight has {int(emb.shape[1])} rows; the stored config says "
                f"vocab_size {config.vocab_size}"
            )
        return replace(config, torch_dtype="float32")  # tensors are dequantized to float32

    def _weight_layers(self, n_layers: int) -> list[int]:
        """Which block's weights each block uses: edgecpm writes the map for shared-layer models (the shared
        blocks are duplicated in the file for llama.cpp; reading one copy keeps them shared in memory)."""
        value = self._meta(SHARED_LAYERS_KEY, None)
        if value is None:
            return list(range(n_layers))
        mapping = [int(x) for x in value]
        if len(mapping) != n_layers or any(not 0 <= w <= i for i, w in enumerate(mapping)):
            raise ConfigError(
                f"GGUF metadata key '{self.arch}.{SHARED_LAYERS_KEY}' is {mapping!r}; expected "
                f"{n_layers} indices, each at most its own block"
            )
        return mapping

    def _read_sparse(self) -> SparseConfig | None:
        prefix = f"{self.arch}.{INFLLM_KEY_PREFIX}"
        values = {k[len(prefix) :]: f.contents() for k, f in self.reader.fields.items() if k.startswith(prefix)}
        if not values:
            return None
        defaults = SparseConfig()
        kwargs = {}
        for key, default in defaults.__dict__.items():
            v = values.get(key, default)
            kwargs[key] = bool(v) if isinstance(default, bool) else int(v)
        return SparseConfig(**kwargs)

    def _eos_ids(self) -> tuple[int, ...]:
        ids: list[int] = []
        for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
            v = field_value(self.reader, f"tokenizer.ggml.{key}")
            if v is not None and int(v) not in ids:
                ids.append(int(v))
        tokens = field_value(self.reader, "tokenizer.ggml.tokens") or []
        # llama.cpp treats these texts as end-of-generation too (MiniCPM4's <|im_end|> has no eos slot)
        for text in ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>"):
            if text in tokens:
                tid = tokens.index(text)
                if tid not in ids:
                    ids.append(tid)
        return tuple(ids) or (2,)
