"""Dense causal GQA attention: the baseline every sparse kernel is compared against."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    scale: float | None = None) -> torch.Tensor:
    """Causal attention of T new queries over S keys (the queries are the last T positions).

    GQA is handled by repeating key/value heads; math is done in the input dtype except the softmax, which
    `scaled_dot_product_attention` keeps stable.
    """
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    if hq != hkv:
        rep = hq // hkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if t == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    # query i (absolute position s - t + i) may see keys 0 .. s - t + i
    mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
