"""`ModelConfig`: one frozen description of every MiniCPM4-family model.

Parsed from a published Hugging Face `config.json` (MiniCPM4 0.5B / 8B, BitCPM4, MiniCPM-SALA, plain Llama) or
built from GGUF metadata by the GGUF weight source. Per-layer structure lives in `LayerSpec`, so dense, InfLLM v2
sparse, lightning and shared layers are all expressed as data and the reference model never special-cases a
checkpoint. Every validation error names the field and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING as dataclass_missing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edgecpm.errors import ConfigError, EdgecpmError
from edgecpm.jsonfile import read_json

AttentionKind = Literal["dense", "infllmv2", "lightning"]

MAX_LAYERS = 10_000  # far above any published model; a bigger count is a corrupt file, not a model
SUPPORTED_ARCHITECTURES = {
    "MiniCPMForCausalLM": "minicpm",
    "LlamaForCausalLM": "llama",
    "MiniCPMSALAForCausalLM": "minicpm_sala",
}


@dataclass(frozen=True)
class RopeScaling:
    """MiniCPM LongRoPE: positions are divided by a per-pair factor, at every length."""

    kind: Literal["longrope"]
    long_factor: tuple[float, ...]
    short_factor: tuple[float, ...]
    original_max_position_embeddings: int


@dataclass(frozen=True)
class SparseConfig:
    """InfLLM v2 settings exactly as the published `sparse_config` block (defaults from the MiniCPM README)."""

    kernel_size: int = 32
    kernel_stride: int = 16
    init_blocks: int = 1
    block_size: int = 64
    window_size: int = 2048
    topk: int = 64
    use_nope: bool = False
    dense_len: int = 8192


@dataclass(frozen=True)
class LightningConfig:
    """MiniCPM-SALA lightning (simple-GLA linear attention) layer shape."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    use_rope: bool = True
    qk_norm: bool = True
    output_norm: bool = True
    output_gate: bool = True


@dataclass(frozen=True)
class LayerSpec:
    """What one decoder layer is: its attention kind, where its weights live and how they are stored.

    `weight_layer` is the index whose tensors this layer uses (itself unless weights are shared), `use_rope`
    is False for NoPE layers (SALA sparse layers) and `output_gate` adds SALA's sigmoid gate on attention.
    `step` multiplies the residual scale: 1.0 as trained, L/N when a shared run of L layers is integrated in
    N ODE steps (`ModelConfig.with_ode_steps`).
    """

    attention: AttentionKind = "dense"
    weight_layer: int = 0
    use_rope: bool = True
    output_gate: bool = False
    ternary: bool = False
    step: float = 1.0


@dataclass(frozen=True)
class OdeSegment:
    """A run of logical layers that repeats one block of `period` weight layers: one forward-Euler integral.

    `start`/`length` index the trained layer stack; `length` is a multiple of `period`.
    """

    start: int
    length: int
    period: int


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    scale_emb: float
    scale_depth: float
    dim_model_base: int | float
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    layers: tuple[LayerSpec, ...]
    rope_scaling: RopeScaling | None = None
    sparse: SparseConfig | None = None
    lightning: LightningConfig | None = None
    ode_step: float = 1.0
    trained_layers: int = 0  # depth L of scale_depth/sqrt(L) when ode_steps changed num_layers (0: num_layers)
    torch_dtype: str = "bfloat16"
    name: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    # ---- derived scalings (one place, used by every backend and exporter) ----
    @property
    def residual_scale(self) -> float:
        """Multiplier on every residual branch: scale_depth / sqrt(L), times the ODE step of shared models."""
        return self.scale_depth / math.sqrt(self.trained_layers or self.num_layers) * self.ode_step

    def layer_residual_scale(self, index: int) -> float:
        """The residual multiplier of logical layer `index` (the ODE step size h, times L/N when stepped)."""
        return self.residual_scale * self.layers[index].step

    @property
    def uniform_residual_scale(self) -> bool:
        """True when every layer uses the same residual multiplier (what llama.cpp's one key can express)."""
        return len({s.step for s in self.layers}) <= 1

    # ---- shared layers as ODE steps ----
    def ode_segments(self) -> tuple[OdeSegment, ...]:
        """The weight-shared runs that fewer (or more) ODE steps can integrate.

        A stack that repeats one block of P < L weight layers (fully shared: P = 1; ALBERT-style cycle) is one
        segment; otherwise every run of >= 2 consecutive layers with the same weights is a segment.
        """
        w = [s.weight_layer for s in self.layers]
        n = len(w)
        for period in range(1, n // 2 + 1):
            if n % period == 0 and len(set(w[:period])) == period and all(w[i] == w[i % period] for i in range(n)):
                return (OdeSegment(0, n, period),)
        segments, i = [], 0
        while i < n:
            j = i
            while j + 1 < n and w[j + 1] == w[i]:
                j += 1
            if j > i:
                segments.append(OdeSegment(i, j - i + 1, 1))
            i = j + 1
        return tuple(segments)

    def _ode_plan(self, steps: int) -> list[int] | None:
        """Layer evaluations per segment for `steps` evaluations in total, or None when it does not divide."""
        segments = self.ode_segments()
        shared = sum(seg.length for seg in segments)
        budget = steps - (self.num_layers - shared)
        counts = []
        for seg in segments:
            count, rem = divmod(budget * seg.length, shared)
            if rem or count < seg.period or count % seg.period:
                return None
            counts.append(count)
        return counts

    def valid_ode_steps(self, limit: int | None = None) -> list[int]:
        """Every `ode_steps` value up to `limit` (default 2L) that integrates each shared run evenly."""
        if not self.ode_segments():
            return []
        return [n for n in range(1, (limit or 2 * self.num_layers) + 1) if self._ode_plan(n) is not None]

    def with_ode_steps(self, steps: int | None) -> ModelConfig:
        """A copy that integrates every shared run with proportionally `steps` layer evaluations in total.

        A shared run of L layers with residual scale h becomes N evaluations of the same weights with scale
        h*L/N (forward Euler over the same interval); unshared layers are kept. None or the trained depth
        returns the config unchanged.
        """
        if steps is None or steps == self.num_layers:
            return self
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise ConfigError(f"ode_steps is {steps!r}; expected a positive integer")
        if self.trained_layers:
            raise ConfigError(
                f"this model is already integrated with {self.num_layers} ODE steps (trained with "
                f"{self.trained_layers}); re-export it from its source checkpoint to change "
                "ode_steps"
            )
        if not self.ode_segments():
            raise ConfigError(
                "ode_steps needs a shared-layer model (config.json 'shared_layers'); this model "
                "has no weight-shared layers"
            )
        counts = self._ode_plan(steps)
        if counts is None:
            valid = ", ".join(str(n) for n in self.valid_ode_steps())
            raise ConfigError(f"ode_steps={steps} does not divide the shared layers evenly; expected one of {valid}")
        layers: list[LayerSpec] = []
        by_start = {seg.start: (seg, count) for seg, count in zip(self.ode_segments(), counts)}
        i = 0
        while i < self.num_layers:
            if i in by_start:
                seg, count = by_start[i]
                block = self.layers[seg.start : seg.start + seg.period]
                step = seg.length / count
                layers += [replace(block[k % seg.period], step=block[k % seg.period].step * step) for k in range(count)]
                i += seg.length
            else:
                layers.append(self.layers[i])
                i += 1
        return replace(self, layers=tuple(layers), num_layers=len(layers), trained_layers=self.num_layers)

    @property
    def ode_steps(self) -> int | None:
        """The step count a stepped config runs with (None: as trained)."""
        return self.num_layers if self.trained_layers else None

    @property
    def logit_scale(self) -> float:
        """The final hidden state is divided by this before the LM head (hidden_size / dim_model_base)."""
        return self.hidden_size / self.dim_model_base

    @property
    def rope_mscale(self) -> float:
        """LongRoPE attention scaling; 1.0 in every published config (max_pos == original max)."""
        if self.rope_scaling is None:
            return 1.0
        ratio = self.max_position_embeddings / self.rope_scaling.original_max_position_embeddings
        if ratio <= 1.0:
            return 1.0
        return math.sqrt(1 + math.log(ratio) / math.log(self.rope_scaling.original_max_position_embeddings))

    @property
    def num_weight_layers(self) -> int:
        return len({spec.weight_layer for spec in self.layers})

    @property
    def has_sparse_layers(self) -> bool:
        return any(spec.attention == "infllmv2" for spec in self.layers)

    @property
    def has_lightning_layers(self) -> bool:
        return any(spec.attention == "lightning" for spec in self.layers)

    @property
    def is_plain_dense(self) -> bool:
        """True when every layer is the standard dense MiniCPM block (what llama.cpp's `minicpm` arch runs)."""
        return (
            all(s.attention in ("dense", "infllmv2") and s.use_rope and not s.output_gate for s in self.layers)
            and self.num_weight_layers == self.num_layers
        )

    def kv_bytes_per_token(self, bytes_per_element: float = 2.0) -> float:
        """Softmax-attention KV cache bytes per token (lightning layers keep a fixed state instead)."""
        softmax_layers = sum(1 for s in self.layers if s.attention != "lightning")
        return 2 * softmax_layers * self.num_kv_heads * self.head_dim * bytes_per_element

    def recurrent_state_bytes(self) -> int:
        """Fixed fp32 state of all lightning layers (independent of context length)."""
        if self.lightning is None:
            return 0
        n = sum(1 for s in self.layers if s.attention == "lightning")
        lc = self.lightning
        return n * lc.num_heads * lc.head_dim * lc.head_dim * 4

    def parameter_count(self) -> int:
        """Parameters stored in the checkpoint (shared layers counted once)."""
        h, i = self.hidden_size, self.intermediate_size
        total = self.vocab_size * h * (1 if self.tie_word_embeddings else 2) + h
        seen: set[int] = set()
        for spec in self.layers:
            if spec.weight_layer in seen:
                continue
            seen.add(spec.weight_layer)
            total += 2 * h + 3 * h * i
            if spec.attention == "lightning" and self.lightning is not None:
                lc = self.lightning
                total += 3 * h * lc.num_heads * lc.head_dim + lc.num_heads * lc.head_dim * h
                total += 2 * lc.head_dim + h + h * h  # q/k norms, o_norm, z_proj
            else:
                total += h * self.num_heads * self.head_dim * 2 + 2 * h * self.num_kv_heads * self.head_dim
                if spec.output_gate:
                    total += h * h
        return total

    def with_sparse(self, sparse: SparseConfig | None) -> ModelConfig:
        """A copy with InfLLM v2 switched on (every softmax layer) or off."""
        kind: AttentionKind = "infllmv2" if sparse is not None else "dense"
        layers = tuple(s if s.attention == "lightning" else replace(s, attention=kind) for s in self.layers)
        return replace(self, sparse=sparse, layers=layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (stored in artifact manifests and read back by `from_dict`)."""
        d = asdict(self)
        d.pop("extra", None)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """The inverse of `to_dict`; the dict comes from a file (a manifest), so every field is checked."""
        _check_stored_config(d)
        d = dict(d)
        d["layers"] = tuple(LayerSpec(**s) for s in d["layers"])
        d["eos_token_ids"] = tuple(d["eos_token_ids"])
        if d.get("rope_scaling"):
            rs = dict(d["rope_scaling"])
            rs["long_factor"] = tuple(rs["long_factor"])
            rs["short_factor"] = tuple(rs["short_factor"])
            d["rope_scaling"] = RopeScaling(**rs)
        if d.get("sparse"):
            d["sparse"] = SparseConfig(**d["sparse"])
        if d.get("lightning"):
            d["lightning"] = LightningConfig(**d["lightning"])
        return cls(**d)


def _check_stored_config(d: Any) -> None:
    """Type and range checks for a `ModelConfig.to_dict()` read back from an artifact's manifest."""

    def bad(field_name: str, expected: str) -> ConfigError:
        return ConfigError(f"manifest config field '{field_name}' is malformed; expected {expected}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_pos_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e300 and math.isfinite(v)

    if not isinstance(d, Mapping):
        raise ConfigError("manifest config is not an object")
    known = {f.name for f in ModelConfig.__dataclass_fields__.values()} - {"extra"}
    required = {
        f.name for f in ModelConfig.__dataclass_fields__.values() if f.default is f.default_factory is dataclass_missing
    }
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"manifest config has unknown field {unknown[0]!r}")
    missing = sorted(required - set(d))
    if missing:
        raise ConfigError(f"manifest config lacks field {missing[0]!r}")
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "max_position_embeddings",
    ):
        if not is_int(d[key]) or not 0 < d[key] < 1 << 40:
            raise bad(key, "a positive integer")
    if not is_int(d["num_layers"]) or not 0 < d["num_layers"] <= MAX_LAYERS:
        raise bad("num_layers", f"an integer in 1..{MAX_LAYERS}")
    if not is_int(d.get("trained_layers", 0)) or not 0 <= d.get("trained_layers", 0) <= MAX_LAYERS:
        raise bad("trained_layers", f"an integer in 0..{MAX_LAYERS}")
    for key in ("rms_norm_eps", "rope_theta", "scale_emb", "scale_depth", "dim_model_base", "ode_step"):
        if key in d and not is_pos_num(d[key]):
            raise bad(key, "a positive finite number")
    for key in ("architecture", "torch_dtype", "name"):
        if key in d and not isinstance(d[key], str):
            raise bad(key, "a string")
    if not isinstance(d["tie_word_embeddings"], bool):
        raise bad("tie_word_embeddings", "true/false")
    if d["bos_token_id"] is not None and not is_int(d["bos_token_id"]):
        raise bad("bos_token_id", "an integer or null")
    eos = d["eos_token_ids"]
    if not isinstance(eos, list) or not eos or not all(is_int(x) for x in eos):
        raise bad("eos_token_ids", "a list of integers")
    layers = d["layers"]
    if not isinstance(layers, list) or len(layers) != d["num_layers"]:
        raise bad("layers", "one entry per layer")
    for i, spec in enumerate(layers):
        if (
            not isinstance(spec, Mapping)
            or set(spec) - set(LayerSpec.__dataclass_fields__)
            or spec.get("attention", "dense") not in ("dense", "infllmv2", "lightning")
            or not (
                is_int(spec.get("weight_layer", 0))
                and 0 <= spec.get("weight_layer", 0) <= max(i, d.get("trained_layers", 0) - 1)
            )
            or not is_pos_num(spec.get("step", 1.0))
            or not all(isinstance(spec.get(k, False), bool) for k in ("use_rope", "output_gate", "ternary"))
        ):
            raise bad(
                f"layers[{i}]", "an attention kind, a stored weight layer, a positive ODE step and true/false flags"
            )
    rs = d.get("rope_scaling")
    if rs is not None:
        if (
            not isinstance(rs, Mapping)
            or set(rs) != set(RopeScaling.__dataclass_fields__)
            or not is_int(rs["original_max_position_embeddings"])
            or not 0 < rs["original_max_position_embeddings"] < 1 << 40
        ):
            raise bad("rope_scaling", "the LongRoPE fields")
        for key in ("long_factor", "short_factor"):
            if (
                not isinstance(rs[key], list)
                or len(rs[key]) != d["head_dim"] // 2
                or not all(is_pos_num(x) for x in rs[key])
            ):
                raise bad(f"rope_scaling.{key}", "head_dim/2 positive numbers")
    for key, cls_ in (("sparse", SparseConfig), ("lightning", LightningConfig)):
        block = d.get(key)
        if block is None:
            continue
        fields_ = cls_.__dataclass_fields__
        if not isinstance(block, Mapping) or set(block) - set(fields_):
            raise bad(key, f"an object with fields {', '.join(fields_)}")
        for name, f in fields_.items():
            if name not in block:
                if f.default is dataclass_missing:
                    raise bad(f"{key}.{name}", "a value")
                continue
            v = block[name]
            wants_bool = f.type in ("bool", bool)
            if wants_bool and not isinstance(v, bool) or not wants_bool and (not is_int(v) or abs(v) >= 1 << 40):
                raise bad(f"{key}.{name}", "true/false" if wants_bool else "an integer")


# ---------------------------------------------------------------------------------------------------------
# Parsing the Hugging Face config.json


def _get(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ..., *, where: str = ""):
    """Read one field with a type check; the error names the field and the expected type."""
    label = f"{where}{key}"
    if key not in d or d[key] is None:
        if default is ...:
            raise ConfigError(f"config field '{label}' is missing (expected {_kind_name(kind)})")
        return default
    value = d[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 1e300:
            raise ConfigError(f"config field '{label}' is {value!r}; expected a finite number")
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise ConfigError(f"config field '{label}' is {value!r}; expected {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true/false",
        list: "a list",
        dict: "an object",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _positive(value: int | float, label: str, limit: int | float | None = None) -> None:
    if not value > 0 or not math.isfinite(value):  # `not >` also catches NaN
        raise ConfigError(f"config field '{label}' is {value!r}; expected a positive value")
    if limit is not None and value > limit:
        raise ConfigError(f"config field '{label}' is {value!r}; expected at most {limit}")


def _parse_rope_scaling(d: Mapping[str, Any], head_dim: int) -> RopeScaling | None:
    rs = d.get("rope_scaling")
    if rs is None:
        return None
    if not isinstance(rs, Mapping):
        raise ConfigError(f"config field 'rope_scaling' is {rs!r}; expected an object or null")
    kind = rs.get("rope_type", rs.get("type"))
    if kind in ("longrope", "su"):
        long_f = _get(rs, "long_factor", list, where="rope_scaling.")
        short_f = _get(rs, "short_factor", list, where="rope_scaling.")
        for name, lst in (("long_factor", long_f), ("short_factor", short_f)):
            if len(lst) != head_dim // 2:
                raise ConfigError(
                    f"config field 'rope_scaling.{name}' has {len(lst)} values; expected head_dim/2 = {head_dim // 2}"
                )
            if not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1e300 and math.isfinite(x)
                for x in lst
            ):
                raise ConfigError(f"config field 'rope_scaling.{name}' must hold positive numbers")
        orig = _get(
            rs, "original_max_position_embeddings", int, d.get("max_position_embeddings", 0), where="rope_scaling."
        )
        _positive(orig, "rope_scaling.original_max_position_embeddings")
        return RopeScaling("longrope", tuple(float(x) for x in long_f), tuple(float(x) for x in short_f), orig)
    if kind in (None, "default"):
        return None
    raise ConfigError(f"config field 'rope_scaling.rope_type' is {kind!r}; expected 'longrope' (MiniCPM) or null")


def _parse_sparse(d: Mapping[str, Any]) -> SparseConfig | None:
    sc = d.get("sparse_config")
    if sc is None:
        return None
    if not isinstance(sc, Mapping):
        raise ConfigError(f"config field 'sparse_config' is {sc!r}; expected an object or null")
    defaults = SparseConfig()
    values: dict[str, Any] = {}
    for key, default in asdict(defaults).items():
        kind = bool if isinstance(default, bool) else int
        values[key] = _get(sc, key, kind, default, where="sparse_config.")
    for key in ("kernel_size", "kernel_stride", "block_size", "window_size", "topk"):
        _positive(values[key], f"sparse_config.{key}")
    if values["init_blocks"] < 0:
        raise ConfigError("config field 'sparse_config.init_blocks' must be >= 0")
    if values["dense_len"] < -1:
        raise ConfigError("config field 'sparse_config.dense_len' must be -1 (always sparse) or >= 0")
    if values["block_size"] % values["kernel_stride"]:
        raise ConfigError(
            f"config field 'sparse_config.block_size' ({values['block_size']}) must be a multiple of "
            f"kernel_stride ({values['kernel_stride']})"
        )
    return SparseConfig(**values)


def _parse_eos(d: Mapping[str, Any]) -> tuple[int, ...]:
    eos = d.get("eos_token_id", 2)
    if isinstance(eos, int) and not isinstance(eos, bool):
        return (eos,)
    if isinstance(eos, list) and eos and all(isinstance(x, int) and not isinstance(x, bool) for x in eos):
        return tuple(eos)
    raise ConfigError(f"config field 'eos_token_id' is {eos!r}; expected an integer or a list of integers")


def _parse_layer_sharing(d: Mapping[str, Any], num_layers: int) -> tuple[list[int], float]:
    """Shared-layer models (edgecpm convention), `shared_layers` is one of

    * `{"num_unique_layers": P}`: layer i uses the weights of layer i % P (a looped stack; P = 1 is fully
      shared, the neural-ODE view of one block applied L times);
    * `{"num_unique_layers": P, "order": "block"}`: ALBERT's `num_hidden_groups`, contiguous groups of L/P
      layers share the weights of the group's first layer;
    * `{"groups": [[1, 2, 3], [5, 6]]}`: partially shared, each listed group uses its first layer's weights and
      every other layer keeps its own.

    `ode_step` (default 1) scales each residual update (the forward-Euler step size).
    """
    sl = d.get("shared_layers")
    if sl is None:
        return list(range(num_layers)), 1.0
    if not isinstance(sl, Mapping):
        raise ConfigError(f"config field 'shared_layers' is {sl!r}; expected an object")
    step = _get(sl, "ode_step", float, 1.0, where="shared_layers.")
    _positive(step, "shared_layers.ode_step")
    if "groups" in sl:
        if "num_unique_layers" in sl:
            raise ConfigError("config field 'shared_layers' has both 'groups' and 'num_unique_layers'; expected one")
        groups = _get(sl, "groups", list, where="shared_layers.")
        weight_map = list(range(num_layers))
        seen: set[int] = set()
        for g, group in enumerate(groups):
            ok = (
                isinstance(group, list)
                and len(group) >= 2
                and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_layers for i in group)
            )
            if not ok:
                raise ConfigError(
                    f"config field 'shared_layers.groups[{g}]' is {group!r}; expected a list of at "
                    f"least two layer indices in [0, {num_layers})"
                )
            if seen & set(group) or len(set(group)) != len(group):
                raise ConfigError(
                    f"config field 'shared_layers.groups[{g}]' repeats a layer; each layer may be in one group once"
                )
            seen |= set(group)
            for i in group:
                weight_map[i] = min(group)
        return weight_map, step
    unique = _get(sl, "num_unique_layers", int, where="shared_layers.")
    if unique <= 0 or num_layers % unique:
        raise ConfigError(
            f"config field 'shared_layers.num_unique_layers' is {unique}; expected a positive divisor of "
            f"num_hidden_layers ({num_layers})"
        )
    order = _get(sl, "order", str, "cycle", where="shared_layers.")
    if order == "cycle":
        return [i % unique for i in range(num_layers)], step
    if order == "block":
        size = num_layers // unique
        return [(i // size) * size for i in range(num_layers)], step
    raise ConfigError(f"config field 'shared_layers.order' is {order!r}; expected 'cycle' or 'block'")


def config_from_hf_dict(d: Mapping[str, Any], *, has_lm_head: bool | None = None, name: str = "") -> ModelConfig:
    """Parse a published `config.json` dict. `has_lm_head` (from the weight index) decides tying when known."""
    if not isinstance(d, Mapping):
        raise ConfigError("config.json must hold a JSON object")
    archs = d.get("architectures")
    model_type = d.get("model_type")
    if archs is not None:
        if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
            raise ConfigError(f"config field 'architectures' is {archs!r}; expected a list of class names")
        if archs[0] not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"config field 'architectures' is {archs[0]!r}; expected one of "
                f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        arch = SUPPORTED_ARCHITECTURES[archs[0]]
    elif model_type in ("minicpm", "llama", "minicpm_sala"):
        arch = model_type
    else:
        raise ConfigError(
            f"config field 'architectures' is missing and model_type is {model_type!r}; expected "
            "MiniCPMForCausalLM, MiniCPMSALAForCausalLM or LlamaForCausalLM"
        )

    hidden = _get(d, "hidden_size", int)
    num_heads = _get(d, "num_attention_heads", int)
    num_layers = _get(d, "num_hidden_layers", int)
    for key, value in (("hidden_size", hidden), ("num_attention_heads", num_heads), ("num_hidden_layers", num_layers)):
        _positive(value, key, MAX_LAYERS if key == "num_hidden_layers" else None)
    num_kv = _get(d, "num_key_value_heads", int, num_heads)
    _positive(num_kv, "num_key_value_heads")
    if num_heads % num_kv:
        raise ConfigError(
            f"config field 'num_key_value_heads' ({num_kv}) must divide num_attention_heads ({num_heads})"
        )
    head_dim = _get(d, "head_dim", int, 0) or hidden // num_heads
    if head_dim * num_heads != hidden and "head_dim" not in d:
        raise ConfigError(
            f"config field 'hidden_size' ({hidden}) must be a multiple of num_attention_heads ({num_heads})"
        )
    _positive(head_dim, "head_dim")
    if head_dim % 2:
        raise ConfigError(f"head_dim is {head_dim}; expected an even number (rotary pairs)")
    if d.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"config field 'hidden_act' is {d['hidden_act']!r}; expected 'silu'")
    if d.get("attention_bias", False) or d.get("mlp_bias", False):
        raise ConfigError("config field 'attention_bias' is true; expected false (MiniCPM4 has no biases)")
    if d.get("pretraining_tp", 1) != 1:
        raise ConfigError(f"config field 'pretraining_tp' is {d['pretraining_tp']!r}; expected 1")

    is_llama = arch == "llama"
    scale_emb = _get(d, "scale_emb", float, 1.0 if is_llama else ...)
    scale_depth = _get(d, "scale_depth", float, math.sqrt(num_layers) if is_llama else ...)
    dim_model_base = _get(d, "dim_model_base", (int, float), hidden if is_llama else ...)
    for key, value in (("scale_emb", scale_emb), ("scale_depth", scale_depth), ("dim_model_base", dim_model_base)):
        _positive(value, key)

    declared_tie = d.get("tie_word_embeddings")
    if declared_tie is not None and not isinstance(declared_tie, bool):
        raise ConfigError(f"config field 'tie_word_embeddings' is {declared_tie!r}; expected true/false")
    if has_lm_head is not None:
        tied = not has_lm_head
    else:
        tied = True if declared_tie is None else declared_tie

    sparse = _parse_sparse(d)
    weight_map, ode_step = _parse_layer_sharing(d, num_layers)
    ternary = bool(d.get("ternary_weights", False))
    lightning: LightningConfig | None = None
    layers: list[LayerSpec] = []
    if arch == "minicpm_sala":
        mixers = _get(d, "mixer_types", list)
        if len(mixers) != num_layers:
            raise ConfigError(
                f"config field 'mixer_types' has {len(mixers)} entries; expected num_hidden_layers ({num_layers})"
            )
        lightning = LightningConfig(
            num_heads=_get(d, "lightning_nh", int, num_heads),
            num_kv_heads=_get(d, "lightning_nkv", int, num_heads),
            head_dim=_get(d, "lightning_head_dim", int, head_dim),
            use_rope=_get(d, "lightning_use_rope", bool, True),  # sizes checked just below
            qk_norm=_get(d, "qk_norm", bool, True),
            output_norm=_get(d, "use_output_norm", bool, True),
            output_gate=_get(d, "use_output_gate", bool, True),
        )
        for key, value in (
            ("lightning_nh", lightning.num_heads),
            ("lightning_nkv", lightning.num_kv_heads),
            ("lightning_head_dim", lightning.head_dim),
        ):
            _positive(value, key)
        attn_rope = _get(d, "attn_use_rope", bool, False)
        attn_gate = _get(d, "attn_use_output_gate", bool, True)
        for i, mixer in enumerate(mixers):
            if mixer == "minicpm4":
                kind: AttentionKind = "infllmv2" if sparse is not None else "dense"
                layers.append(LayerSpec(kind, weight_map[i], attn_rope, attn_gate, ternary))
            elif mixer == "lightning-attn":
                layers.append(LayerSpec("lightning", weight_map[i], lightning.use_rope, lightning.output_gate, ternary))
            else:
                raise ConfigError(
                    f"config field 'mixer_types[{i}]' is {mixer!r}; expected 'minicpm4' or 'lightning-attn'"
                )
    else:
        kind = "infllmv2" if sparse is not None else "dense"
        layers = [LayerSpec(kind, weight_map[i], True, False, ternary) for i in range(num_layers)]

    max_pos = _get(d, "max_position_embeddings", int, 32768)
    _positive(max_pos, "max_position_embeddings")
    rope_theta = _get(d, "rope_theta", float, 10000.0)
    _positive(rope_theta, "rope_theta")
    eps = _get(d, "rms_norm_eps", float, 1e-6)
    _positive(eps, "rms_norm_eps")
    vocab = _get(d, "vocab_size", int)
    _positive(vocab, "vocab_size")
    intermediate = _get(d, "intermediate_size", int)
    _positive(intermediate, "intermediate_size")
    bos = d.get("bos_token_id", 1)
    if bos is not None and (not isinstance(bos, int) or isinstance(bos, bool)):
        raise ConfigError(f"config field 'bos_token_id' is {bos!r}; expected an integer")

    return ModelConfig(
        architecture=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rms_norm_eps=eps,
        rope_theta=rope_theta,
        scale_emb=scale_emb,
        scale_depth=scale_depth,
        dim_model_base=dim_model_base,
        tie_word_embeddings=tied,
        bos_token_id=bos,
        eos_token_ids=_parse_eos(d),
        layers=tuple(layers),
        rope_scaling=_parse_rope_scaling(d, head_dim),
        sparse=sparse,
        lightning=lightning,
        ode_step=ode_step,
        torch_dtype=str(d.get("torch_dtype", d.get("dtype", "bfloat16"))),
        name=name,
        extra={k: d[k] for k in ("mup_denominator",) if k in d},
    )


def load_hf_config(path: str | Path, *, has_lm_head: bool | None = None) -> ModelConfig:
    """Read `config.json` from a checkpoint directory (or the file itself)."""
    p = Path(path)
    cfg_path = p / "config.json" if p.is_dir() else p
    if not cfg_path.exists():
        raise ConfigError(f"no config.json in {p}")
    try:
        d = read_json(cfg_path)
    except EdgecpmError as exc:
        raise ConfigError(str(exc)) from None
    return config_from_hf_dict(d, has_lm_head=has_lm_head, name=p.name if p.is_dir() else p.parent.name)


# ---------------------------------------------------------------------------------------------------------
# Shape presets for planning without weights (values: the published openbmb/MiniCPM4-0.5B config.json;
# 8B: the model card and ports, since its config.json was not seen verbatim)

PRESET_HF_CONFIGS: dict[str, dict[str, Any]] = {
    "minicpm4-0.5b": {
        "architectures": ["MiniCPMForCausalLM"],
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "vocab_size": 73448,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "scale_emb": 12,
        "scale_depth": 1.4,
        "dim_model_base": 256,
        "bos_token_id": 1,
        "eos_token_id": [2, 73440],
        "torch_dtype": "bfloat16",
    },
    "minicpm4-8b": {
        "architectures": ["MiniCPMForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 16384,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 2,
        "vocab_size": 73448,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "scale_emb": 12,
        "scale_depth": 1.4,
        "dim_model_base": 256,
        "bos_token_id": 1,
        "eos_token_id": [2, 73440],
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
        "sparse_config": asdict(SparseConfig()),
    },
    # MiniCPM-SALA 9B: 8 sparse (minicpm4) layers, 24 lightning layers (docs/variants.md: a secondary source)
    "minicpm-sala": {
        "architectures": ["MiniCPMSALAForCausalLM"],
        "model_type": "minicpm_sala",
        "hidden_size": 4096,
        "intermediate_size": 16384,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "lightning_nh": 32,
        "lightning_nkv": 32,
        "lightning_head_dim": 128,
        "mixer_types": ["minicpm4" if i in (0, 9, 16, 17, 22, 29, 30, 31) else "lightning-attn" for i in range(32)],
        "attn_use_rope": False,
        "lightning_use_rope": True,
        "qk_norm": True,
        "use_output_gate": True,
        "use_output_norm": True,
        "attn_use_output_gate": True,
        "vocab_size": 73448,
        "max_position_embeddings": 524288,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "scale_emb": 12,
        "scale_depth": 1.4,
        "dim_model_base": 256,
        "mup_denominator": 32,
        "bos_token_id": 1,
        "eos_token_id": [2, 73440],
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
        "sparse_config": asdict(SparseConfig()),
    },
}


def preset_config(name: str) -> ModelConfig:
    """A shape-only config for a published model (the LongRoPE factors are not needed for planning)."""
    key = name.lower()
    if key not in PRESET_HF_CONFIGS:
        raise ConfigError(f"unknown model preset {name!r}; expected one of {', '.join(sorted(PRESET_HF_CONFIGS))}")
    return config_from_hf_dict(PRESET_HF_CONFIGS[key], name=key)


def is_preset(name: str) -> bool:
    return str(name).lower() in PRESET_HF_CONFIGS
