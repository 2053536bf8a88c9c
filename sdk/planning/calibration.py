"""Per-host calibration: the cost-model coefficients fitted on this host's measurements (stored by host_store).

`edgecpm profile` fits, for every backend it measured, the fraction of the probed bandwidth that decode
reaches, the per-layer dispatch overhead and the prefill compute efficiency (`fit_coefficients`). `plan
--device host` then predicts with those instead of the rules of thumb (`stored_coefficients`); the JSON files
are kept by `host_store.py`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

from edgecpm.config import ModelConfig
from edgecpm.planning.cost_model import (
    BackendCoefficients,
    QuantSpec,
    decode_attention_flops,
    default_coefficients,
    kv_read_bytes,
    prefill_flops,
    weight_sizes,
)


def stored_coefficients(calibration: dict[str, Any] | None, backend: str, quant: str) -> BackendCoefficients | None:
    """Coefficients measured for `backend` (same quant preferred, else any quant measured on it)."""
    if not calibration:
        return None
    entries = calibration.get("backends", {})
    entry = entries.get(f"{backend}/{quant}")
    if entry is None:
        same = [v for k, v in entries.items() if k.split("/")[0] == backend]
        entry = same[-1] if same else None
    if entry is None:
        return None
    c = entry["coefficients"]
    return BackendCoefficients(
        c["bandwidth_efficiency"],
        c["compute_efficiency"],
        c["layer_overhead_s"],
        c["token_overhead_s"],
        c["runtime_bytes"],
        f"calibrated on this host ({entry.get('measured_at', '?')}, {entry.get('model', '?')},"
        f" {entry.get('quant', '?')})",
        c.get("attention_efficiency"),
    )


def fit_coefficients(
    config: ModelConfig,
    q: QuantSpec,
    backend: str,
    bandwidth_gbs: float,
    peak_gflops: float | None,
    decode: Sequence[tuple[int, float]],
    prefill: Sequence[tuple[int, float]],
    layer_overhead_s: float | None,
    runtime_bytes: float | None,
    attention_peak_gflops: float | None = None,
) -> BackendCoefficients:
    """Invert the cost model on measurements.

    decode: (context, seconds per token); prefill: (prompt tokens, seconds). The per-layer overhead comes from
    a separate measurement (a tiny model with the same layer count, where bytes are negligible). The compute
    efficiency is the median over the prefill points. Decode time minus overhead is then fitted by least
    squares as `a * bytes / BW + b * attention_flops / peak` over the context lengths (the context slope is
    the attention cost, which on a CPU is far above its bytes): bandwidth efficiency 1/a, attention
    efficiency 1/b. With a single context, or a non-physical fit (noise), the attention efficiency falls back
    to the prefill compute efficiency and the bandwidth efficiency is the median of the per-point inversions.
    """
    import numpy as np

    base = default_coefficients(backend, "cpu")
    layer_ovh = base.layer_overhead_s if layer_overhead_s is None else layer_overhead_s
    fixed = config.num_layers * layer_ovh
    sparse = config.has_sparse_layers
    ceffs = []
    if peak_gflops:
        for prompt, seconds in prefill:
            flops = prefill_flops(config, prompt, sparse)
            ceffs.append(flops / (max(seconds - fixed, 1e-6) * peak_gflops * 1e9))
    c_eff = statistics.median(ceffs) if ceffs else base.compute_efficiency
    streamed = weight_sizes(config, q).streamed_bytes
    x_bytes = np.array(
        [(streamed + kv_read_bytes(config, c, q.kv_bytes, sparse)) / (bandwidth_gbs * 1e9) for c, _ in decode]
    )
    x_attn = np.array(
        [
            decode_attention_flops(config, c, sparse) / (attention_peak_gflops * 1e9) if attention_peak_gflops else 0.0
            for c, _ in decode
        ]
    )
    y = np.array([max(t - fixed, 1e-6) for _, t in decode])
    attn_eff: float | None = None
    bw_eff = base.bandwidth_efficiency
    if len({c for c, _ in decode}) >= 2 and attention_peak_gflops:
        (a, b), *_ = np.linalg.lstsq(np.stack([x_bytes, x_attn], axis=1), y, rcond=None)
        if a > 0 and b > 0:
            bw_eff, attn_eff = 1.0 / a, 1.0 / b
    if attn_eff is None and len(y):
        attn = x_attn / c_eff
        bw_eff = float(np.median(x_bytes / np.maximum(y - attn, 1e-6)))
    return BackendCoefficients(
        round(float(bw_eff), 4),
        round(c_eff, 4),
        layer_ovh,
        0.0,
        runtime_bytes if runtime_bytes is not None else base.runtime_bytes,
        f"calibrated on this host ({time.strftime('%Y-%m-%d')})",
        None if attn_eff is None else round(float(attn_eff), 5),
    )
