"""Dense causal GQA attention: the baseline every sparse kernel is compared against."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal attention of T new queries over S keys (the queries are the last T positions).

    GQA folds each group's query heads into rows against their shared KV head (no copy of the keys); math is
    done in the input dtype except the softmax, which `scaled_dot_product_attention` keeps stable.
    """
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    # GQA without copying keys/values: the g query heads of a group become g * t rows of one KV head
    qg = q.reshape(b, hkv, g * t, d)
    if t == 1:
        out = F.scaled_dot_product_attention(qg, k, v, scale=scale)
    else:
        # query i (absolute position s - t + i) may see keys 0 .. s - t + i
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask.repeat(g, 1), scale=scale)
    return out.view(b, hq, t, d)
