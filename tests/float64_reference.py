"""An independent float64 NumPy implementation of the published MiniCPM4 math, for parity tests.

Written from the published math only (the MiniCPM4 Hugging Face `modeling_minicpm.py`, the MiniCPM4 technical
report, docs/kernels.md); it shares no code with `edgecpm` (it reads config.json with `json` and the weights
with `safetensors` itself).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def load_checkpoint(directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.torch import load_file

    cfg = json.loads((directory / "config.json").read_text())
    weights: dict[str, np.ndarray] = {}
    for f in sorted(directory.glob("*.safetensors")):
        for name, t in load_file(str(f)).items():
            weights[name] = t.double().numpy()
    return cfg, weights


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def forward(
    cfg: dict, w: dict[str, np.ndarray], ids: list[int], schedule: list[tuple[int, float]] | None = None
) -> np.ndarray:
    """Full-sequence logits [T, V] in float64.

    `schedule` overrides the layer loop with explicit (weight layer, residual multiplier) pairs, written out by
    a test (e.g. a shared block applied N times with step scale_depth/sqrt(L) * L/N).
    """
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = H // nh
    eps = cfg["rms_norm_eps"]
    T = len(ids)
    # LongRoPE: freqs[t, i] = (t / factor[i]) * inv_freq[i]; half-split rotation
    inv_freq = 1.0 / (cfg.get("rope_theta", 10000.0) ** (np.arange(0, hd, 2) / hd))
    rs = cfg.get("rope_scaling")
    factors = np.ones(hd // 2)
    mscale = 1.0
    if rs:
        orig = rs["original_max_position_embeddings"]
        factors = np.array(rs["long_factor"] if T > orig else rs["short_factor"], dtype=np.float64)
        maxpos = cfg["max_position_embeddings"]
        if maxpos > orig:
            mscale = math.sqrt(1 + math.log(maxpos / orig) / math.log(orig))
    t = np.arange(T, dtype=np.float64)
    freqs = (t[:, None] / factors[None, :]) * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], -1)
    cos, sin = np.cos(emb) * mscale, np.sin(emb) * mscale

    def rope(x: np.ndarray) -> np.ndarray:  # x [heads, T, hd]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    res = cfg["scale_depth"] / math.sqrt(L)
    shared = cfg.get("shared_layers")  # edgecpm's convention: layer i uses weights i % P, residual * ode_step
    unique = shared.get("num_unique_layers", L) if shared else L
    if shared:
        res *= shared.get("ode_step", 1.0)
    h = w["model.embed_tokens.weight"][ids] * cfg["scale_emb"]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    base = res
    for layer, mult in schedule or [(i % unique, 1.0) for i in range(L)]:
        res = base * mult
        p = f"model.layers.{layer}."
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q = (x @ w[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd).transpose(1, 0, 2)
        k = (x @ w[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
        v = (x @ w[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        rep = nh // nkv
        k, v = np.repeat(k, rep, 0), np.repeat(v, rep, 0)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(T, nh * hd)
        h = h + (o @ w[p + "self_attn.o_proj.weight"].T) * res
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        g = x @ w[p + "mlp.gate_proj.weight"].T
        u = x @ w[p + "mlp.up_proj.weight"].T
        h = h + (((g / (1 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T) * res
    h = rms_norm(h, w["model.norm.weight"], eps) / (H / cfg["dim_model_base"])
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return h @ head.T
