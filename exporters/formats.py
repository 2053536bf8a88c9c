"""The one table of format facts (in the spirit of llama.cpp's `llama-arch.cpp`).

Per format: its exporter module, the backend that runs it by default, its quantizations (name, bits per weight
and compute type, which the cost model uses) and what it does with each model feature (kept, run dense,
decomposed, duplicated, or refused with the exact reason). The exporters, `edgecpm.load`, the device profiles,
the cost model and the planner all read this table, and `check_exportable` is the one place a format refuses a
model, so the planner never plans what an exporter would refuse and says the exporter's own reason.

Bits per weight include block scales: Q8_0 = 34 bytes / 32 values, Q4_0 = 18 / 32, Q4_1 = 20 / 32,
Q5_0 = 22 / 32, Q5_1 = 24 / 32, Q6_K = 210 / 256, TQ2_0 = 66 / 256, TQ1_0 = 54 / 256; Q4_K_M and Q5_K_M are
llama.cpp's mixes (~4.85 and ~5.69 with a Q6_K output matrix). The GGUF exporter stores the embedding/output of
the numpy-quantized integer schemes as Q8_0 (docs/gguf.md). This module imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgecpm.config import ModelConfig
from edgecpm.errors import EdgecpmError


@dataclass(frozen=True)
class QuantSpec:
    """Storage of one quantization: bits per weight of layer matrices, the embedding table and the LM head."""

    name: str
    linear_bits: float
    embed_bits: float
    head_bits: float
    compute: str  # which peak rate the matmuls use: fp32_gflops, fp16_gflops, bf16_gflops, int8_gops
    quality: int  # 0 = lossless ... 3 = 4-bit; ternary models store ternary weights losslessly
    ternary_only: bool = False
    kv_bytes: float = 2.0  # bytes per cached K/V element the backend uses with this quant
    auto: bool = True  # the planner considers it unasked (False: dominated by another quant; only on request)

    @property
    def label(self) -> str:
        return self.name


def _q(
    name: str,
    lin: float,
    emb: float,
    head: float,
    compute: str,
    quality: int,
    *,
    ternary: bool = False,
    kv: float = 2.0,
    auto: bool = True,
) -> QuantSpec:
    return QuantSpec(name, lin, emb, head, compute, quality, ternary, kv, auto)


# What a format can do with a model feature.
KEPT = "kept"  # stored and run as trained
DENSE = "metadata only"  # settings stored, the runtime runs the layers dense
DECOMPOSED = "decomposed"  # run through the op's decomposition into standard ops
DUPLICATED = "duplicated"  # run as trained, weights stored once per use
REFUSED = "refused"  # the exporter refuses the model
STORED = "stored only"  # written to the file, but the format's own runtime cannot run it (edgecpm's can)


@dataclass(frozen=True)
class Feature:
    support: str  # KEPT, DENSE, DECOMPOSED, DUPLICATED, STORED or REFUSED
    note: str  # what the format does with it; for REFUSED the exporter's exact error text

    @property
    def refused(self) -> bool:
        return self.support == REFUSED

    @property
    def stored_only(self) -> bool:
        return self.support == STORED


def _sparse_nope(c: ModelConfig) -> bool:
    return c.has_sparse_layers and c.sparse is not None and c.sparse.use_nope


# Model features, each detected from the config alone (checked in this order).
FEATURES: dict[str, tuple[str, Callable[[ModelConfig], bool]]] = {
    "lightning_layers": ("lightning-attention (SALA) layers", lambda c: c.has_lightning_layers),
    "output_gates": ("gated attention output", lambda c: any(s.output_gate for s in c.layers)),
    "nope_layers": ("NoPE (no rotary) attention layers", lambda c: any(not s.use_rope for s in c.layers)),
    "sparse_use_nope": ("InfLLM v2 block selection on pre-RoPE keys (use_nope)", _sparse_nope),
    "sparse_layers": ("InfLLM v2 sparse attention", lambda c: c.has_sparse_layers),
    "shared_layers": ("shared (looped) layers", lambda c: c.num_weight_layers < c.num_layers),
    # shared layers run with ode_steps != trained depth: their residual step differs from unshared layers'
    "layer_residual_scales": (
        "per-layer residual scales (ode_steps)",
        lambda c: not getattr(c, "uniform_residual_scale", True),
    ),
    "ternary_weights": ("ternary weights", lambda c: any(s.ternary for s in c.layers)),
}


@dataclass(frozen=True)
class FormatFacts:
    name: str
    title: str  # how messages name it
    exporter: str | None  # module with `prepare` / `write` (None: the checkpoint itself, run by torch)
    backend: str  # the backend that runs it by default
    quants: Mapping[str, QuantSpec]
    default_quant: str
    features: Mapping[str, Feature] = field(default_factory=dict)
    single_file_suffix: str | None = None  # an OUT ending in this is one file (plus a sidecar manifest)


# GGUF files of models llama.cpp cannot run get edgecpm's own architecture name, so llama.cpp refuses them at
# load ("unknown model architecture") instead of running something else (docs/gguf.md)
EDGECPM_GGUF_ARCH = "edgecpm-sala"
_GGUF_STORED = (
    f"stored in an {EDGECPM_GGUF_ARCH} GGUF that edgecpm's torch backend runs; llama.cpp cannot run it "
    "(export to onnx or executorch for a runtime other than torch)"
)
_ONNX_NOPE = (
    "sparse_config.use_nope (block selection on pre-RoPE keys) is not supported by the ONNX exporter; "
    "export with sparse=False (dense attention) instead"
)

TABLE: dict[str, FormatFacts] = {
    "gguf": FormatFacts(
        "gguf",
        "GGUF",
        "edgecpm.exporters.gguf_exporter",
        "llama.cpp",
        {
            q.name: q
            for q in (
                _q("f32", 32, 32, 32, "fp32_gflops", 0, auto=False),
                _q("f16", 16, 16, 16, "fp16_gflops", 0),
                _q("bf16", 16, 16, 16, "bf16_gflops", 0),
                _q("q8_0", 8.5, 8.5, 8.5, "int8_gops", 1),
                _q("q4_0", 4.5, 8.5, 8.5, "int8_gops", 3),
                _q("q4_1", 5.0, 8.5, 8.5, "int8_gops", 3, auto=False),
                _q("q5_0", 5.5, 8.5, 8.5, "int8_gops", 2, auto=False),
                _q("q5_1", 6.0, 8.5, 8.5, "int8_gops", 2, auto=False),
                _q("q4_k_m", 4.85, 6.56, 6.56, "int8_gops", 3),
                _q("q5_k_m", 5.69, 6.56, 6.56, "int8_gops", 2),
                _q("q6_k", 6.5625, 6.5625, 6.5625, "int8_gops", 1, auto=False),
                _q("tq1_0", 1.6875, 8.5, 8.5, "int8_gops", 0, ternary=True),
                _q("tq2_0", 2.0625, 8.5, 8.5, "int8_gops", 0, ternary=True),
            )
        },
        "f16",
        {
            "lightning_layers": Feature(STORED, "llama.cpp has no lightning-attention (MiniCPM-SALA) layers"),
            "output_gates": Feature(STORED, "llama.cpp's minicpm architecture has no gated attention layers"),
            "nope_layers": Feature(STORED, "llama.cpp's minicpm architecture has no NoPE attention layers"),
            "sparse_use_nope": Feature(DENSE, "stored as minicpm.infllm_v2.use_nope; llama.cpp runs dense"),
            "sparse_layers": Feature(
                DENSE, "InfLLM v2 settings stored as minicpm.infllm_v2.* metadata; llama.cpp runs sparse layers dense"
            ),
            "shared_layers": Feature(
                DUPLICATED, "llama.cpp needs every blk.N, so a shared layer's weights are stored once per use"
            ),
            "layer_residual_scales": Feature(
                REFUSED,
                "llama.cpp has one residual scale for all layers; this ode_steps setting integrates the "
                "shared layers with a step size the unshared ones do not have (pick ode_steps equal to the "
                "trained depth, or export to onnx or executorch)",
            ),
            "ternary_weights": Feature(
                KEPT,
                "tq1_0/tq2_0 pack them losslessly (rows a multiple of 256, one "
                "scale per 256 values); finer scales (per 32 / 128) only with ternary_regroup=true, at the "
                "relative error the refusal states and the manifest records; other quants quantize them like "
                "any weight",
            ),
        },
        single_file_suffix=".gguf",
    ),
    "onnx": FormatFacts(
        "onnx",
        "ONNX",
        "edgecpm.exporters.onnx_exporter",
        "onnxruntime",
        {
            q.name: q
            for q in (
                _q("fp32", 32, 32, 32, "fp32_gflops", 0, kv=4),
                _q("fp16", 16, 16, 16, "fp16_gflops", 0),
                # MatMulNBits (block 32, fp32 scales + zero points); LM head at 8 bits, embedding at model dtype
                _q("int8", 9.25, 32, 9.25, "int8_gops", 1, kv=4),
                _q("int4", 5.25, 32, 9.25, "int8_gops", 3, kv=4),
                # BitCPM4: ternary linears as 2-bit MatMulNBits (codes + one fp32 scale per 32 values; 2.25 bits
                # with per-row scales), lossless; the LM head at 8 bits
                _q("tq2", 3.0, 32, 9.25, "int8_gops", 0, ternary=True, kv=4),
            )
        },
        "fp32",
        {
            "lightning_layers": Feature(
                KEPT,
                "each lightning layer's recurrent state is a graph input/output pair "
                "(past_key_values.N.recurrent_state -> present.N.recurrent_state, like the KV cache), named "
                "in genai_config.json for ONNX Runtime GenAI",
            ),
            "output_gates": Feature(KEPT, "a Sigmoid gate on the attention output"),
            "nope_layers": Feature(KEPT, "GroupQueryAttention with do_rotary=0"),
            "sparse_use_nope": Feature(REFUSED, _ONNX_NOPE),
            "sparse_layers": Feature(
                KEPT,
                "an ai.edgecpm InfLLMv2Attention node whose function body is the "
                "sparse algorithm in standard ops, with the compressed keys as graph state; below dense_len "
                "the fused GroupQueryAttention (an If on the length) (option sparse=False: dense attention)",
            ),
            "shared_layers": Feature(KEPT, "each shared weight is one initializer used by every layer"),
            "layer_residual_scales": Feature(KEPT, "each layer multiplies by its own residual-scale constant"),
            "ternary_weights": Feature(
                KEPT,
                "quant tq2 packs them losslessly as 2-bit MatMulNBits (their own codes and scales); other "
                "quants quantize them like any weight",
            ),
        },
    ),
    "executorch": FormatFacts(
        "executorch",
        "ExecuTorch",
        "edgecpm.exporters.executorch_exporter",
        "executorch",
        {
            q.name: q
            for q in (
                # XNNPACK: 8da4w = int4 weights (group 32, fp32 scales), int8 dynamic activations; the embedding is
                # exported with embedding_bits=8; the KV cache stays fp32
                _q("fp32", 32, 32, 32, "fp32_gflops", 0, kv=4),
                _q("8da8w", 9, 9, 9, "int8_gops", 1, kv=4),
                _q("8da4w", 5, 9, 5, "int8_gops", 3, kv=4),
            )
        },
        "fp32",
        {
            "lightning_layers": Feature(
                KEPT,
                "the recurrent state of each lightning layer is a mutable buffer (no KV cache); rollback "
                "(truncate) below the current length is refused",
            ),
            "output_gates": Feature(KEPT, "a sigmoid gate on the attention output"),
            "nope_layers": Feature(KEPT, "attention without rotary embedding"),
            "sparse_use_nope": Feature(
                REFUSED,
                "InfLLM v2 with use_nope (block selection on pre-RoPE keys) has "
                "no ExecuTorch op form yet; export a checkpoint with use_nope=false",
            ),
            "sparse_layers": Feature(
                DECOMPOSED,
                "sparse past dense_len (a torch.cond on the length computes dense or sparse, never both; "
                "compressed keys in a mutable buffer; default max_context_len 2 x dense_len), by default "
                "through the op's decomposition, which runs on any ExecuTorch runtime; with "
                "sparse_kernel=compiled through edgecpm's compiled C++ kernel library, which edgecpm.load "
                "builds and loads (the stock runtime, C++ runner and Android AAR cannot load such a program)",
            ),
            "shared_layers": Feature(KEPT, "shared linears are stored once in the .pte"),
            "layer_residual_scales": Feature(KEPT, "each layer's residual scale folded into o_proj / down_proj"),
            "ternary_weights": Feature(
                KEPT,
                "8da4w stores them exactly (int4 codes -1/0/+1 with their own scales, int8 dynamic activations; "
                "XNNPACK has no 2-bit kernel); fp32 and 8da8w treat them like any weight",
            ),
        },
    ),
    # the reference torch backend runs the checkpoint as is, in fp32 (default) or bf16
    "hf": FormatFacts(
        "hf",
        "checkpoint",
        None,
        "torch",
        {q.name: q for q in (_q("f32", 32, 32, 32, "fp32_gflops", 0, kv=4), _q("bf16", 16, 16, 16, "bf16_gflops", 0))},
        "f32",
        {name: Feature(KEPT, "run by the reference model") for name in FEATURES},
    ),
}

EXPORT_FORMATS: tuple[str, ...] = tuple(n for n, f in TABLE.items() if f.exporter is not None)
FORMAT_BACKENDS: dict[str, str] = {n: TABLE[n].backend for n in EXPORT_FORMATS}
BACKEND_FORMAT: dict[str, str] = {f.backend: n for n, f in TABLE.items()}
KNOWN_BACKENDS: tuple[str, ...] = tuple(BACKEND_FORMAT)
FORMAT_QUANTS: dict[str, dict[str, QuantSpec]] = {n: dict(f.quants) for n, f in TABLE.items()}
TERNARY_BLOCK = 256  # TQ1_0 / TQ2_0: one scale per 256 values


def facts(fmt: str) -> FormatFacts:
    if fmt not in TABLE:
        raise EdgecpmError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    return TABLE[fmt]


def quant_spec(fmt: str, quant: str | None) -> QuantSpec:
    """The format's QuantSpec for `quant` (None: its default); the one check of quant names."""
    f = facts(fmt)
    key = f.default_quant if quant is None else str(quant).lower()
    if key not in f.quants:
        raise EdgecpmError(f"unknown quant {quant!r} for {fmt}; expected one of {', '.join(f.quants)}")
    return f.quants[key]


def runs_sparse(fmt: str) -> bool:
    """Whether the format's runtime runs InfLLM v2 layers sparse (GGUF: llama.cpp runs them dense)."""
    return facts(fmt).features["sparse_layers"].support in (KEPT, DECOMPOSED)


def present_features(config: ModelConfig) -> list[str]:
    return [name for name, (_, detect) in FEATURES.items() if detect(config)]


def _active(config: ModelConfig, fmt: str, name: str, options: Mapping[str, Any]) -> bool:
    """Whether a present feature reaches the format (ONNX's sparse=False exports InfLLM v2 layers dense)."""
    if fmt == "onnx" and name == "sparse_use_nope":
        return bool(options.get("sparse", True)) and any(s.use_rope for s in config.layers if s.attention == "infllmv2")
    return True


def _ternary_row_problem(config: ModelConfig, quant: str) -> str | None:
    """TQ types need every weight row (the K dimension) to be a multiple of 256 values (GGUF tensor names)."""
    rows = {
        "attn_q": config.hidden_size,
        "attn_k": config.hidden_size,
        "attn_v": config.hidden_size,
        "attn_output": config.num_heads * config.head_dim,
        "ffn_gate": config.hidden_size,
        "ffn_up": config.hidden_size,
        "ffn_down": config.intermediate_size,
    }
    for name, n in rows.items():
        if n % TERNARY_BLOCK:
            return f"tensor blk.0.{name}.weight has rows of {n} values; {quant} needs a multiple of {TERNARY_BLOCK}"
    return None


def refusal(
    config: ModelConfig,
    fmt: str,
    quant: str | None = None,
    options: Mapping[str, Any] | None = None,
    source: Any = None,
) -> str | None:
    """The exporter's reason for refusing (config, fmt, quant), or None when it exports.

    With a weight `source` a ternary quant also checks the first weight's values (one magnitude per 256-value
    block), the check the GGUF exporter applies to every tensor as it writes; without one the config's
    ternary flag decides.
    """
    opts = dict(options or {})
    f = facts(fmt)
    for name in present_features(config):
        feat = f.features.get(name)
        if feat is not None and feat.refused and _active(config, fmt, name, opts):
            return feat.note
    if quant is None:
        return None
    q = quant_spec(fmt, quant)
    if q.ternary_only and fmt != "gguf":
        return _ternary_linear_problem(config, q.name, source)
    if q.ternary_only:
        problem = _ternary_row_problem(config, q.name)
        if problem:
            return problem
        if source is not None:
            return _ternary_value_problem(source, bool(opts.get("ternary_regroup")))
        if not any(s.ternary for s in config.layers):
            return (
                f"quant {q.name} stores ternary weights; this model's weights are not ternary "
                "(use a BitCPM4 checkpoint)"
            )
    return None


def _ternary_linear_problem(config: ModelConfig, quant: str, source: Any) -> str | None:
    """A non-GGUF ternary quant packs whatever block layout the checkpoint has; it only needs ternary weights."""
    name = "model.layers.0.self_attn.q_proj.weight"
    if source is not None and name in source:
        from edgecpm.weights.ternary import detect_ternary

        ternary = detect_ternary(source.get(name)) is not None
    else:
        ternary = any(s.ternary for s in config.layers)
    if ternary:
        return None
    return f"quant {quant} stores ternary weights; {name} is not ternary (use a BitCPM4 checkpoint)"


def _ternary_value_problem(source: Any, regroup: bool = False) -> str | None:
    from edgecpm.exporters.gguf_quant import check_ternary

    name = "model.layers.0.self_attn.q_proj.weight"
    if name not in source:
        return None
    try:
        check_ternary(source.get(name).float().numpy(), "blk.0.attn_q.weight", regroup=regroup)
    except EdgecpmError as exc:
        return str(exc)
    return None


def runtime_refusal(config: ModelConfig, fmt: str) -> str | None:
    """Why the format's own runtime (llama.cpp for GGUF) cannot run this model, or None when it can.

    Such a model still exports (its features are STORED): edgecpm's torch backend runs the file.
    """
    f = facts(fmt)
    for name in present_features(config):
        feat = f.features.get(name)
        if feat is not None and feat.stored_only:
            return f"{feat.note}; {_GGUF_STORED}"
    return None


def check_exportable(
    config: ModelConfig,
    fmt: str,
    quant: str | None = None,
    options: Mapping[str, Any] | None = None,
    source: Any = None,
) -> None:
    """Raise the exporter's own `EdgecpmError` when `fmt`/`quant` cannot express this model."""
    reason = refusal(config, fmt, quant, options, source)
    if reason is not None:
        raise EdgecpmError(reason)


def losses(config: ModelConfig, fmt: str, context: int | None = None) -> list[str]:
    """What a model keeps or loses in `fmt`, one line per present feature the format does not run as trained.

    `context`: the ExecuTorch program's max_context_len (sparse attention only exists past dense_len).
    """
    f = facts(fmt)
    out = []
    for name in present_features(config):
        feat = f.features.get(name)
        if feat is None or feat.support == KEPT and not (fmt == "executorch" and name == "sparse_layers"):
            continue
        if feat.refused:
            out.append(f"refused: {FEATURES[name][0]}")
        elif feat.stored_only:
            out.append(f"stored for edgecpm's torch backend only: {feat.note}")
        elif fmt == "executorch" and name == "sparse_layers":
            sc = config.sparse
            if context is not None and sc is not None and context < sc.dense_len:
                out.append(f"{FEATURES[name][0]} runs dense: max_context_len {context} < dense_len {sc.dense_len}")
            elif context is None and sc is not None and sc.dense_len > 1:
                out.append(
                    f"{FEATURES[name][0]} decomposed into standard ops, and only in a program with "
                    f"max_context_len >= dense_len {sc.dense_len} (the default, 2 x dense_len capped by "
                    "max_position_embeddings, has it)"
                )
            else:
                out.append(f"{FEATURES[name][0]} decomposed into standard ops")
        else:
            out.append(feat.note)
    return out


def format_report(config: ModelConfig, context: int | None = None) -> dict[str, list[str]]:
    """Per export format, what this model would lose (empty list: nothing)."""
    return {fmt: losses(config, fmt, context) for fmt in EXPORT_FORMATS}
