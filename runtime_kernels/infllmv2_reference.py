"""InfLLM v2 sparse attention, plain torch reference: one query token and one KV head at a time.

Clarity first; used by the tests as the definition the vectorized and Triton kernels must match. Written
independently of `infllmv2_vectorized` (loops and explicit index lists instead of pooling ops and gathers).
Layouts as in `edgecpm.runtime_kernels`: q `[B, Hq, T, D]`, k/v `[B, Hkv, S, D]`, out `[B, Hq, T, D]`.
"""

from __future__ import annotations

import math

import torch

from edgecpm.config import SparseConfig


def _kernels(keys: torch.Tensor, ks: int, st: int) -> list[torch.Tensor]:
    """Mean of each complete window of `ks` keys, windows starting every `st` keys."""
    out = []
    start = 0
    while start + ks <= keys.shape[0]:
        out.append(keys[start : start + ks].float().mean(0))
        start += st
    return out


def selected_blocks(
    q_group: torch.Tensor, kernels: list[torch.Tensor] | torch.Tensor, pos: int, sp: SparseConfig
) -> list[int]:
    """Blocks one query position attends to. q_group `[G, D]`: the query heads sharing one KV head."""
    ks, st, bs = sp.kernel_size, sp.kernel_stride, sp.block_size
    d = q_group.shape[-1]
    q_block = pos // bs
    # kernels entirely in the past of this query
    visible = [i for i in range(len(kernels)) if i * st + ks - 1 <= pos]
    kernel_score = [0.0] * len(kernels)
    if visible:
        ck = kernels[: len(visible)] if torch.is_tensor(kernels) else torch.stack([kernels[i] for i in visible])
        # softmax over kernels for each head ([G, V]), then summed over the group's heads
        shared = torch.softmax(q_group.float() @ ck.T / math.sqrt(d), dim=-1).sum(0).tolist()
        for j, i in enumerate(visible):
            kernel_score[i] = shared[j]
    window_blocks = sp.window_size // bs
    budget = sp.topk + window_blocks
    forced, free = [], []
    for j in range(q_block + 1):
        if j < sp.init_blocks or j >= q_block - window_blocks:
            forced.append(j)
            continue
        # kernels overlapping block j's tokens [j*bs, (j+1)*bs)
        overlapping = [kernel_score[i] for i in range(len(kernels)) if i * st < (j + 1) * bs and i * st + ks > j * bs]
        free.append((max(overlapping) if overlapping else 0.0, j))
    free.sort(key=lambda item: (-item[0], item[1]))  # ties: lower block index first
    extra = max(0, budget - len(forced))
    return sorted(forced + [j for _, j in free[:extra]])


def infllmv2_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sp: SparseConfig,
    scale: float | None = None,
    score_q: torch.Tensor | None = None,
    score_k: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparse attention by definition (dense below `dense_len`), returning `[B, Hq, T, D]` in q's dtype.

    `score_q` / `score_k` (default q, k) are what block selection scores (pre-RoPE ones for `use_nope`).
    """
    score_q = q if score_q is None else score_q
    score_k = k if score_k is None else score_k
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    dense = 0 <= sp.dense_len and s < sp.dense_len
    out = torch.zeros(b, hq, t, d, dtype=torch.float32)
    for bi in range(b):
        for h in range(hkv):
            kernels = _kernels(score_k[bi, h], sp.kernel_size, sp.kernel_stride)
            if kernels:
                kernels = torch.stack(kernels)  # [NC, D]; the visible ones are always a prefix
            for ti in range(t):
                pos = s - t + ti
                q_group = q[bi, h * g : (h + 1) * g, ti]
                if dense:
                    keys = torch.arange(pos + 1)
                else:
                    blocks = selected_blocks(score_q[bi, h * g : (h + 1) * g, ti], kernels, pos, sp)
                    keys = torch.cat(
                        [torch.arange(j * sp.block_size, min((j + 1) * sp.block_size, pos + 1)) for j in blocks]
                    )
                kk, vv = k[bi, h, keys].float(), v[bi, h, keys].float()
                att = torch.softmax(q_group.float() @ kk.T * scale, dim=-1)
                out[bi, h * g : (h + 1) * g, ti] = att @ vv
    return out.to(q.dtype)
