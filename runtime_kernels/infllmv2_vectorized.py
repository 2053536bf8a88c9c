"""InfLLM v2 sparse attention, vectorized torch: the fast CPU path and the body the exporters trace.

Layouts: q `[B, Hq, T, D]`, k/v `[B, Hkv, S, D]` (the whole visible context; the T queries are its last T
positions), compressed keys `[B, Hkv, NC, D]`, output `[B, Hq, T, D]`.

Two stages per query token (see docs/kernels.md for the exact rules):

1. block selection: score the mean-pooled key kernels, softmax per query head, sum over the GQA group,
   max-pool kernels to blocks, force the init and local blocks, pick the top
   `topk + window_size // block_size` blocks (ties: lower block index first);
2. attention over the tokens of the selected blocks only (gather, batched matmul, causal mask).

Written in export-friendly ops (unfold, matmul, sort, gather, masking): no `.item()`, no numpy and no Python
loop over data-dependent sizes on the traced path. Eager prefill additionally (a) walks the queries in chunks
to bound memory and (b) gathers the union of the blocks chosen by a 64-query block once when its queries
mostly agree, else each query's own blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgecpm.config import SparseConfig

# eager prefill: queries per chunk, bytes per batch of score/gather tensors
QUERY_CHUNK = 256
SCORE_BYTES = 128 << 20
UNION_LIMIT = 2  # share one gather per query block while its union is at most this many budgets


def num_kernels(length: int, kernel_size: int, kernel_stride: int) -> int:
    """Complete compression windows over `length` keys: floor((len - ks) / st) + 1, or 0."""
    return 0 if length < kernel_size else (length - kernel_size) // kernel_stride + 1


def compress_keys(k: torch.Tensor, kernel_size: int, kernel_stride: int) -> torch.Tensor:
    """Mean of keys over complete windows: `[B, H, S, D] -> [B, H, NC, D]` (fp32)."""
    b, h, s, d = k.shape
    if s < kernel_size:
        return k.new_zeros((b, h, 0, d), dtype=torch.float32)
    return k.float().unfold(2, kernel_size, kernel_stride).mean(-1)


def compress_keys_padded(k: torch.Tensor, sp: SparseConfig) -> torch.Tensor:
    """Compressed keys over k zero-padded to exactly `ceil(S/bs) * bs/st` windows (a static size relation).

    The extra windows reach past the last key, so the causal visibility mask never lets a query see them.
    """
    s = k.shape[2]
    nb = (s + sp.block_size - 1) // sp.block_size
    k = F.pad(k, (0, 0, 0, nb * sp.block_size + sp.kernel_size - sp.kernel_stride - s))
    return k.float().unfold(2, sp.kernel_size, sp.kernel_stride).mean(-1)


def budget(sp: SparseConfig) -> tuple[int, int]:
    """(blocks chosen per query incl. forced ones, local-window blocks before the query's own block)."""
    return sp.topk + sp.window_size // sp.block_size, sp.window_size // sp.block_size


def block_scores(q: torch.Tensor, ck: torch.Tensor, s: int, sp: SparseConfig) -> torch.Tensor:
    """Stage 1 scores `[B, Hkv, T, NB]`: +inf forced blocks, -inf future ones, else the pooled score."""
    b, hq, t, d = q.shape
    hkv, nc = ck.shape[1], ck.shape[2]
    g = hq // hkv
    bs, st, ks = sp.block_size, sp.kernel_stride, sp.kernel_size
    nb = (s + bs - 1) // bs
    pos = torch.arange(t, device=q.device) + (s - t)  # absolute query positions
    qg = q.float().reshape(b, hkv, g * t, d)
    logits = torch.matmul(qg, ck.transpose(-1, -2)).view(b, hkv, g, t, nc) * (1.0 / math.sqrt(d))
    kernel_last = torch.arange(nc, device=q.device) * st + (ks - 1)
    visible = kernel_last[None, :] <= pos[:, None]  # [T, NC]: kernels entirely in the past
    logits = logits.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    probs = torch.where(visible.any(-1)[:, None], probs, torch.zeros_like(probs))
    shared = probs.sum(2)  # [B, Hkv, T, NC]: the group shares its blocks
    # max-pool kernels to blocks: block j overlaps kernels j*r - pad .. j*r + r - 1 (pad <= r)
    r = bs // st
    pad = -(-ks // st) - 1
    if nc != nb * r:  # state-provided keys stop at the last complete window (eager, concrete sizes)
        shared = F.pad(shared, (0, nb * r - nc))
    per_block = shared.view(b, hkv, t, nb, r)
    pooled = per_block.amax(-1)
    if pad:
        spill = F.pad(per_block[..., r - pad :].amax(-1), (1, 0))[..., :nb]  # previous block's last kernels
        pooled = torch.maximum(pooled, spill)
    blk = torch.arange(nb, device=q.device)
    qblk = (pos // bs)[:, None]
    _, win = budget(sp)
    causal = blk[None, :] <= qblk
    forced = (blk[None, :] < sp.init_blocks) | (blk[None, :] >= qblk - win)
    scores = torch.where(forced, torch.full_like(pooled, float("inf")), pooled)
    return torch.where(causal, scores, torch.full_like(pooled, float("-inf")))


def select_blocks(scores: torch.Tensor, sp: SparseConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Top blocks per query: (indices `[B, Hkv, T, slots]`, valid mask). Forced blocks always count.

    `slots` is static (the budget, or more when the forced blocks alone exceed it): the scores are padded with
    -inf so short contexts need no data-dependent slicing; unused slots are invalid and point at block 0.
    """
    k_budget, win = budget(sp)
    slots = max(k_budget, sp.init_blocks + win + 1)
    scores = F.pad(scores, (0, slots), value=float("-inf"))
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    sorted_scores, order = sorted_scores[..., :slots], order[..., :slots]
    rank = torch.arange(slots, device=scores.device)
    valid = (sorted_scores > float("-inf")) & ((sorted_scores == float("inf")) | (rank < k_budget))
    return torch.where(valid, order, torch.zeros_like(order)), valid


def _attend_groups(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    uidx: torch.Tensor,
    allowed: torch.Tensor,
    s: int,
    block_size: int,
    scale: float,
    pos: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of query groups over gathered blocks.

    q `[B, Hkv, G, N, Qg, D]` (N groups of Qg consecutive queries), uidx `[B, Hkv, N, U]` block indices,
    allowed `[B, Hkv, N, Qg, U]` (query chose that block). Returns `[B, Hkv, G, N, Qg, D]`.
    """
    b, hkv, g, n, qg, d = q.shape
    u = uidx.shape[-1]
    bs = block_size
    # token-level gather (indices past the end are clamped; the causal mask below hides them)
    tok = (uidx[..., None] * bs + torch.arange(bs, device=q.device)).clamp(max=s - 1)
    tok = tok.view(b, hkv, n * u * bs)
    # row gathers (index_select copies whole rows, far cheaper than an element-wise gather)
    if k.is_contiguous() and v.is_contiguous():
        rows = (tok + torch.arange(b * hkv, device=q.device).view(b, hkv, 1) * s).reshape(-1)
        kg, vg = k.view(b * hkv * s, d).index_select(0, rows), v.view(b * hkv * s, d).index_select(0, rows)
    else:  # a slice of a bigger cache: gather per (batch, KV head) instead of copying the cache
        kg = torch.stack([torch.stack([k[i, h].index_select(0, tok[i, h]) for h in range(hkv)]) for i in range(b)])
        vg = torch.stack([torch.stack([v[i, h].index_select(0, tok[i, h]) for h in range(hkv)]) for i in range(b)])
    kg, vg = kg.view(b, hkv, n, u * bs, d), vg.view(b, hkv, n, u * bs, d)
    qq = q.permute(0, 1, 3, 2, 4, 5).reshape(b, hkv, n, g * qg, d)
    att = torch.matmul(qq.float(), kg.float().transpose(-1, -2)).view(b, hkv, n, g, qg, u * bs) * scale
    # token mask: the block was chosen by this query and the key is not in its future
    if pos is None:  # the groups are the last n * qg positions
        t_total = n * qg
        pos = (torch.arange(t_total, device=q.device) + (s - t_total)).view(n, qg)
    keypos = (uidx[..., None] * bs + torch.arange(bs, device=q.device)).view(b, hkv, n, 1, u * bs)
    ok = allowed[..., None].expand(b, hkv, n, qg, u, bs).reshape(b, hkv, n, qg, u * bs)
    ok = ok & (keypos <= pos[None, None, :, :, None])
    att = att.masked_fill(~ok[:, :, :, None], float("-inf"))
    probs = torch.softmax(att, dim=-1).view(b, hkv, n, g * qg, u * bs)
    out = torch.matmul(probs, vg.float()).view(b, hkv, n, g, qg, d)
    return out.permute(0, 1, 3, 2, 4, 5).to(q.dtype)


def sparse_attention_traced(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ck: torch.Tensor,
    sp: SparseConfig,
    scale: float | None = None,
    score_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sparse path with one gather per query: what `torch.export` sees (dynamic S and T)."""
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    idx, valid = select_blocks(block_scores(q if score_q is None else score_q, ck, s, sp), sp)
    qg = q.view(b, hkv, g, t, 1, d)
    out = _attend_groups(qg, k, v, idx, valid[:, :, :, None, :], s, sp.block_size, scale)
    return out.reshape(b, hq, t, d)


def _attend_batched(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    uidx: torch.Tensor,
    allowed: torch.Tensor,
    s: int,
    block_size: int,
    scale: float,
    pos: torch.Tensor,
) -> torch.Tensor:
    """`_attend_groups` over batches of groups, each batch's gathered keys and scores about SCORE_BYTES."""
    b, hkv, g, n, qg, d = q.shape
    u = uidx.shape[-1]
    per_group = b * hkv * u * block_size * 4 * (g * qg + 2 * d)
    step = max(1, SCORE_BYTES // max(per_group, 1))
    return torch.cat(
        [
            _attend_groups(
                q[:, :, :, i : i + step],
                k,
                v,
                uidx[:, :, i : i + step],
                allowed[:, :, i : i + step],
                s,
                block_size,
                scale,
                pos[i : i + step],
            )
            for i in range(0, n, step)
        ],
        dim=3,
    )


def _sparse_chunk_eager(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ck: torch.Tensor,
    s: int,
    sp: SparseConfig,
    scale: float,
    score_q: torch.Tensor,
) -> torch.Tensor:
    """Eager prefill chunk. When the queries of a 64-query block mostly agree on their blocks, the block's
    union is gathered once and shared (a block-sparse matmul); when they disagree (union much larger than
    the budget), each query gathers its own blocks, so the cost stays bounded by the budget either way."""
    b, hq, t, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    qg_size = sp.block_size
    idx, valid = select_blocks(block_scores(score_q, ck, s, sp), sp)
    nb = (s + sp.block_size - 1) // sp.block_size
    dump = torch.where(valid, idx, torch.full_like(idx, nb))  # invalid slots land in a spare column
    sel = torch.zeros(b, hkv, t, nb + 1, dtype=torch.bool, device=q.device)
    sel.scatter_(-1, dump, True)
    sel = sel[..., :nb]
    # group queries into runs of qg_size (pad the front so groups end at the last query)
    front = (-t) % qg_size
    n = (t + front) // qg_size
    sel_g = F.pad(sel, (0, 0, front, 0)).view(b, hkv, n, qg_size, nb)
    union = sel_g.any(3)
    u = int(union.sum(-1).max())
    if u > UNION_LIMIT * idx.shape[-1]:
        pos = (torch.arange(t, device=q.device) + (s - t)).view(t, 1)
        out = _attend_batched(
            q.view(b, hkv, g, t, 1, d), k, v, idx, valid[:, :, :, None, :], s, sp.block_size, scale, pos
        )
        return out.reshape(b, hq, t, d)
    _, uidx = torch.sort(union.to(torch.int8), dim=-1, descending=True, stable=True)
    uidx = uidx[..., :u]
    allowed = torch.gather(sel_g, -1, uidx[:, :, :, None, :].expand(b, hkv, n, qg_size, u))
    # padded rows get positions before the chunk; they are computed (possibly as NaN rows) and dropped
    qp = F.pad(q, (0, 0, front, 0)).view(b, hkv, g, n, qg_size, d)
    pos = (torch.arange(n * qg_size, device=q.device) + (s - n * qg_size)).view(n, qg_size)
    out = _attend_batched(qp, k, v, uidx, allowed, s, sp.block_size, scale, pos)
    return out.reshape(b, hkv, g, n * qg_size, d)[:, :, :, front:].reshape(b, hq, t, d)


def infllmv2_vectorized(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sp: SparseConfig,
    ck: torch.Tensor | None = None,
    scale: float | None = None,
    score_q: torch.Tensor | None = None,
    score_k: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparse attention (dense below `dense_len`).

    `ck`: precomputed compressed keys (decode state). `score_q` / `score_k`: other queries/keys to select blocks
    with (the pre-RoPE ones when `use_nope`); attention itself always uses q, k, v.
    """
    from edgecpm.runtime_kernels.dense import dense_attention

    s = k.shape[2]
    if 0 <= sp.dense_len and s < sp.dense_len:
        return dense_attention(q, k, v, scale=scale)
    t = q.shape[2]
    if ck is None:
        ck = compress_keys_padded(k if score_k is None else score_k, sp)
    if torch.compiler.is_compiling() or t == 1:
        return sparse_attention_traced(q, k, v, ck, sp, scale, score_q)
    score_q = q if score_q is None else score_q
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    outs = []
    for start in range(0, t, QUERY_CHUNK):
        end = min(t, start + QUERY_CHUNK)
        # the chunk's queries are the last (end) positions of a context of s - t + end keys
        s_c = s - t + end
        outs.append(
            _sparse_chunk_eager(
                q[:, :, start:end],
                k[:, :, :s_c],
                v[:, :, :s_c],
                ck[:, :, : num_kernels(s_c, sp.kernel_size, sp.kernel_stride)],
                s_c,
                sp,
                scale,
                score_q[:, :, start:end],
            )
        )
    return torch.cat(outs, dim=2)
