"""Roofline cost model: memory, decode and prefill speed of a model on a device, from first principles.

Decode (batch 1) is bound by bytes moved per token: every streamed weight (all layers plus the LM head; the
embedding table contributes one row) plus the KV entries the new token attends to. With InfLLM v2 a token past
`dense_len` attends `topk * block_size + window_size` tokens plus one compressed key per `kernel_stride`
tokens, instead of the whole context (docs/planner.md, the cost model):

    t_decode(c) = bytes(c) / (BW_eff * bandwidth_efficiency) + layers * layer_overhead + token_overhead

Prefill is bound by compute, `2 * params * N` plus attention `4 * L * H * d * sum(attended)` FLOPs, but never
faster than reading the weights once:

    t_prefill(N) = max(flops / (peak * compute_efficiency), weight_bytes / BW_eff) + layers * layer_overhead

The efficiencies and overheads are per backend: defaults below (rules of thumb, labelled as such), replaced on
a host by the values `edgecpm profile` measures (`calibration.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from edgecpm.config import ModelConfig
from edgecpm.device_profiles.profile import DeviceProfile
from edgecpm.exporters.formats import BACKEND_FORMAT, FORMAT_QUANTS, QuantSpec  # noqa: F401 - re-exported

# Quant specs (bits per weight, compute type) and the backend <-> format map live in the format table.


@dataclass(frozen=True)
class BackendCoefficients:
    """How close a backend gets to the roofline on one device, and its fixed costs."""

    bandwidth_efficiency: float  # achieved / effective bandwidth during decode
    compute_efficiency: float  # achieved / peak compute during prefill
    layer_overhead_s: float  # per layer per forward call (dispatch, kernel launches)
    token_overhead_s: float  # per forward call (sampling glue, logits copy)
    runtime_bytes: float  # resident runtime (libraries, allocator pools) besides weights and KV
    source: str = "default (rule of thumb, not measured)"
    attention_efficiency: float | None = None  # decode attention vs peak (None: compute_efficiency)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Rules of thumb, used until `edgecpm profile` measures the host. llama.cpp CPU reaches ~70 % of the
# measured bandwidth on tuned SoCs (ExecuTorch 1B at ~70 % of 76.8 GB/s: docs/device-sources.md).
_MB = 1e6
DEFAULT_COEFFICIENTS: dict[tuple[str, str], BackendCoefficients] = {
    ("llama.cpp", "cpu"): BackendCoefficients(0.8, 0.3, 1.5e-5, 2e-4, 60 * _MB),
    ("llama.cpp", "gpu"): BackendCoefficients(0.75, 0.35, 6e-5, 5e-4, 400 * _MB),
    ("executorch", "cpu"): BackendCoefficients(0.7, 0.3, 2e-5, 3e-4, 40 * _MB),
    ("executorch", "gpu"): BackendCoefficients(0.6, 0.3, 1e-4, 5e-4, 300 * _MB),
    ("onnxruntime", "cpu"): BackendCoefficients(0.6, 0.25, 3e-5, 3e-4, 80 * _MB),
    ("onnxruntime", "gpu"): BackendCoefficients(0.7, 0.35, 6e-5, 5e-4, 400 * _MB),
    ("torch", "cpu"): BackendCoefficients(0.5, 0.4, 3e-4, 1e-3, 400 * _MB),
    ("torch", "gpu"): BackendCoefficients(0.5, 0.3, 3e-4, 1e-3, 900 * _MB),
}


def default_coefficients(backend: str, engine: str) -> BackendCoefficients:
    return DEFAULT_COEFFICIENTS[(backend, engine)]


# ---------------------------------------------------------------------------------------------------------
# Sizes


def _linear_params(config: ModelConfig, unique: bool) -> int:
    """Layer matrix parameters: each physical layer once (`unique`), or once per logical layer (streamed)."""
    total, seen = 0, set()
    h, i = config.hidden_size, config.intermediate_size
    for spec in config.layers:
        if unique and spec.weight_layer in seen:
            continue
        seen.add(spec.weight_layer)
        n = 3 * h * i
        if spec.attention == "lightning" and config.lightning is not None:
            lc = config.lightning
            n += 4 * h * lc.num_heads * lc.head_dim + h * h
        else:
            n += 2 * h * config.num_heads * config.head_dim + 2 * h * config.num_kv_heads * config.head_dim
            if spec.output_gate:
                n += h * h
        total += n
    return total


@dataclass(frozen=True)
class WeightSizes:
    stored_bytes: float  # resident weights
    streamed_bytes: float  # read per decoded token (layers, once per logical layer, plus the LM head)
    linear_params: int  # per forward token, for FLOPs (logical layers)


def weight_sizes(config: ModelConfig, q: QuantSpec) -> WeightSizes:
    emb = config.vocab_size * config.hidden_size
    unique = _linear_params(config, unique=True)
    logical = _linear_params(config, unique=False)
    norms = (2 * config.num_weight_layers + 1) * config.hidden_size * 4
    head_separate = not config.tie_word_embeddings or q.head_bits != q.embed_bits
    stored = unique * q.linear_bits / 8 + emb * q.embed_bits / 8 + norms
    if head_separate:
        stored += emb * q.head_bits / 8
    streamed = logical * q.linear_bits / 8 + emb * q.head_bits / 8 + config.hidden_size * q.embed_bits / 8
    return WeightSizes(stored, streamed, logical)


def attended_tokens(config: ModelConfig, context: np.ndarray | int, sparse: bool) -> np.ndarray:
    """Tokens one query reads K/V for at position `context` (InfLLM v2 past `dense_len`, else all)."""
    c = np.asarray(context, dtype=np.float64)
    sc = config.sparse
    if not sparse or sc is None:
        return c
    budget = sc.topk * sc.block_size + sc.window_size
    dense = c <= sc.dense_len if sc.dense_len >= 0 else np.zeros_like(c, dtype=bool)
    return np.where(dense, c, np.minimum(c, budget))


def _softmax_layers(config: ModelConfig) -> int:
    return sum(1 for s in config.layers if s.attention != "lightning")


def kv_read_bytes(config: ModelConfig, context: int, kv_bytes: float, sparse: bool) -> float:
    """K/V bytes one decoded token reads at context length `context` (plus InfLLM v2 compressed keys)."""
    per_token = config.kv_bytes_per_token(kv_bytes)
    read = per_token * float(attended_tokens(config, context, sparse))
    sc = config.sparse
    if sparse and sc is not None and (sc.dense_len < 0 or context > sc.dense_len):
        read += _softmax_layers(config) * config.num_kv_heads * config.head_dim * kv_bytes * context / sc.kernel_stride
    return read + config.recurrent_state_bytes()


def kv_cache_bytes(config: ModelConfig, context: int, kv_bytes: float, sparse: bool) -> float:
    """Resident KV cache at `context` tokens, plus InfLLM v2 compressed keys and lightning state."""
    total = config.kv_bytes_per_token(kv_bytes) * context + config.recurrent_state_bytes()
    sc = config.sparse
    if sparse and sc is not None:
        total += _softmax_layers(config) * config.num_kv_heads * config.head_dim * kv_bytes * context / sc.kernel_stride
    return total


def activation_bytes(config: ModelConfig, prompt: int, backend: str) -> float:
    """Compute buffers of a prefill chunk (512 tokens for the C++ runtimes, the whole prompt for torch)."""
    chunk = min(prompt, 512) if backend != "torch" else prompt
    h, i = config.hidden_size, config.intermediate_size
    buffers = chunk * (4 * h + 3 * i) * 4 + config.vocab_size * 4 * 2
    if backend == "torch":  # scores are materialized per layer
        buffers += config.num_heads * chunk * prompt * 4
    return float(buffers)


def prefill_flops(config: ModelConfig, prompt: int, sparse: bool) -> float:
    """FLOPs to prefill `prompt` tokens: matmuls plus attention over the attended tokens of each position."""
    sizes = 2.0 * _linear_params(config, unique=False) * prompt + 2.0 * config.vocab_size * config.hidden_size
    positions = np.arange(1, prompt + 1, dtype=np.float64)
    attended = float(attended_tokens(config, positions, sparse).sum())
    attn = 4.0 * _softmax_layers(config) * config.num_heads * config.head_dim * attended
    return sizes + attn


# ---------------------------------------------------------------------------------------------------------
# Prediction


@dataclass
class Prediction:
    weights_bytes: float
    kv_bytes: float
    runtime_bytes: float
    activation_bytes: float
    total_bytes: float
    decode_bytes_per_token: float | None
    decode_tokens_per_s: float | None  # with the model's attention (sparse when it has InfLLM v2)
    decode_tokens_per_s_dense: float | None  # the same with dense attention
    prefill_tokens_per_s: float | None
    prefill_bound: str | None  # "compute" or "memory"
    bandwidth_gbs: float | None
    bandwidth_basis: str
    coefficients: BackendCoefficients
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coefficients"] = self.coefficients.to_dict()
        for key in (
            "weights_bytes",
            "kv_bytes",
            "runtime_bytes",
            "activation_bytes",
            "total_bytes",
            "decode_bytes_per_token",
        ):
            if d[key] is not None:
                d[key] = int(d[key])
        for key in ("decode_tokens_per_s", "decode_tokens_per_s_dense", "prefill_tokens_per_s"):
            if d[key] is not None:
                d[key] = round(d[key], 2)
        return d


def decode_attention_flops(config: ModelConfig, context: int, sparse: bool) -> float:
    """FLOPs of one decoded token's attention (QK and PV over the attended tokens)."""
    attended = float(attended_tokens(config, context, sparse))
    return 4.0 * _softmax_layers(config) * config.num_heads * config.head_dim * attended


def decode_seconds(
    config: ModelConfig,
    q: QuantSpec,
    context: int,
    sparse: bool,
    bandwidth_gbs: float,
    coeffs: BackendCoefficients,
    peak_gflops: float | None = None,
) -> tuple[float, float]:
    """(seconds per decoded token, bytes moved per token) at `context` tokens already cached.

    Matmuls stream weights (bandwidth bound); attention over a long context also costs compute on a CPU, a
    separate kernel, so its time is added (with the backend's compute efficiency) when the peak is known.
    """
    moved = weight_sizes(config, q).streamed_bytes + kv_read_bytes(config, context, q.kv_bytes, sparse)
    seconds = moved / (bandwidth_gbs * 1e9 * coeffs.bandwidth_efficiency)
    if peak_gflops:
        eff = coeffs.attention_efficiency or coeffs.compute_efficiency
        seconds += decode_attention_flops(config, context, sparse) / (peak_gflops * 1e9 * eff)
    return seconds + config.num_layers * coeffs.layer_overhead_s + coeffs.token_overhead_s, moved


def prefill_seconds(
    config: ModelConfig,
    q: QuantSpec,
    prompt: int,
    sparse: bool,
    bandwidth_gbs: float,
    peak_gflops: float | None,
    coeffs: BackendCoefficients,
) -> tuple[float | None, str | None]:
    if peak_gflops is None:
        return None, None
    t_compute = prefill_flops(config, prompt, sparse) / (peak_gflops * 1e9 * coeffs.compute_efficiency)
    t_memory = weight_sizes(config, q).streamed_bytes / (bandwidth_gbs * 1e9 * coeffs.bandwidth_efficiency)
    bound = "compute" if t_compute >= t_memory else "memory"
    return max(t_compute, t_memory) + config.num_layers * coeffs.layer_overhead_s, bound


def compute_key(device: DeviceProfile, backend: str, q: QuantSpec) -> str:
    """Which peak rate bounds this backend's matmuls.

    The host's rates are torch GEMM measurements; a C++ runtime's kernels relate to those only through its
    calibrated efficiency, so on the host every non-torch backend is referred to the fp32 rate.
    """
    if device.name == "host" and backend != "torch":
        return "fp32_gflops"
    return q.compute


def predict(
    config: ModelConfig,
    q: QuantSpec,
    backend: str,
    device: DeviceProfile,
    context: int,
    prompt: int | None = None,
    coeffs: BackendCoefficients | None = None,
    sparse: bool | None = None,
) -> Prediction:
    """Memory at `context` tokens and tokens/s: decode at `context`, prefill of `prompt` tokens."""
    coeffs = coeffs or default_coefficients(backend, device.engine)
    sparse = config.has_sparse_layers if sparse is None else sparse
    prompt = min(prompt or context, context)
    sizes = weight_sizes(config, q)
    kv = kv_cache_bytes(config, context, q.kv_bytes, sparse)
    act = activation_bytes(config, prompt, backend)
    total = sizes.stored_bytes + kv + coeffs.runtime_bytes + act
    bw, basis = device.effective_bandwidth()
    notes: list[str] = []
    if bw is None:
        notes.append(f"{device.name} has no known memory bandwidth: tokens/s cannot be predicted")
        return Prediction(
            sizes.stored_bytes,
            kv,
            coeffs.runtime_bytes,
            act,
            total,
            None,
            None,
            None,
            None,
            None,
            None,
            basis,
            coeffs,
            notes,
        )
    peak = device.peak_compute(compute_key(device, backend, q))
    attn_peak = device.peak_compute("fp32_gflops") if device.engine == "cpu" else None
    t_dec, moved = decode_seconds(config, q, context, sparse, bw, coeffs, attn_peak)
    t_dense, _ = decode_seconds(config, q, context, False, bw, coeffs, attn_peak)
    if peak is None:
        notes.append(f"{device.name} has no known {q.compute} peak: prefill cannot be predicted")
    t_pre, bound = prefill_seconds(config, q, prompt, sparse, bw, peak, coeffs)
    return Prediction(
        sizes.stored_bytes,
        kv,
        coeffs.runtime_bytes,
        act,
        total,
        moved,
        1.0 / t_dec,
        1.0 / t_dense,
        None if t_pre is None else prompt / t_pre,
        bound,
        bw,
        basis,
        coeffs,
        notes,
    )


def with_source(coeffs: BackendCoefficients, source: str) -> BackendCoefficients:
    return replace(coeffs, source=source)
