"""Per-host calibration: the probe and the measured cost-model coefficients of each backend, stored as JSON.

`edgecpm profile` fits, for every backend it measured, the fraction of the probed bandwidth that decode
reaches, the per-layer dispatch overhead and the prefill compute efficiency (`fit_coefficients`). `plan
--device host` then predicts with those instead of the rules of thumb. Files live in
`~/.cache/edgecpm/calibration/<host-id>.json` (`EDGECPM_CALIBRATION_DIR` overrides the folder).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import EdgecpmError
from .cost_model import (
    BackendCoefficients,
    QuantSpec,
    decode_attention_flops,
    default_coefficients,
    kv_read_bytes,
    prefill_flops,
    weight_sizes,
)

SCHEMA = "edgecpm.calibration/1"


def calibration_dir() -> Path:
    return Path(os.environ.get("EDGECPM_CALIBRATION_DIR") or Path.home() / ".cache" / "edgecpm" / "calibration")


def calibration_path(hid: str) -> Path:
    return calibration_dir() / f"{hid}.json"


def load_calibration(hid: str) -> dict[str, Any] | None:
    """The stored calibration of host `hid`, None when there is none; a corrupt file is a clear error."""
    path = calibration_path(hid)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgecpmError(f"calibration file {path} is corrupt ({exc}); delete it and rerun edgecpm profile") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise EdgecpmError(f"calibration file {path} is not an {SCHEMA} file; delete it and rerun edgecpm profile")
    return data


def _write(hid: str, data: dict[str, Any]) -> Path:
    path = calibration_path(hid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_probe(probe: dict[str, Any]) -> Path:
    """Store (or refresh) the host probe, keeping any backend coefficients already there."""
    hid = probe["host_id"]
    data = load_calibration(hid) or {"schema": SCHEMA, "host_id": hid, "backends": {}}
    data["probe"] = probe
    return _write(hid, data)


def save_coefficients(probe: dict[str, Any], fitted: dict[str, dict[str, Any]]) -> Path:
    """Store the probe and fitted coefficients keyed `backend/quant`, replacing older ones."""
    hid = probe["host_id"]
    data = load_calibration(hid) or {"schema": SCHEMA, "host_id": hid, "backends": {}}
    data["probe"] = probe
    data.setdefault("backends", {}).update(fitted)
    return _write(hid, data)


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
