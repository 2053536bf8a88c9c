"""InfLLM v2 stage 2 as a Triton kernel: attention over the selected blocks with an online softmax.

Block selection (stage 1: compressed-key scores, group sum, pooling, top-k) reuses the vectorized torch code, so
the two implementations choose identical blocks; this kernel replaces the gather + masked matmul. One program
handles one (batch, KV head, query token, slice of the chosen blocks): it loads the group's query heads once,
walks its blocks and keeps a running max / sum per head (FlashAttention style), so no gathered copy of the
keys is ever made; the slices' partial softmax states are merged afterwards (flash-decoding).
Runs on CUDA, or on CPU tensors under `TRITON_INTERPRET=1` (how the tests run it without a GPU).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from edgecpm.config import SparseConfig
from edgecpm.runtime_kernels.dense import dense_attention
from edgecpm.runtime_kernels.infllmv2_vectorized import (
    QUERY_CHUNK,
    block_scores,
    compress_keys_padded,
    num_kernels,
    select_blocks,
)


@triton.jit
def _sparse_block_attn(
    Q,
    K,
    V,
    IDX,
    ACC,
    ML,
    T,
    S,
    SLOTS,
    PER_SPLIT,
    G,
    D,
    scale,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_ib,
    stride_ih,
    stride_it,
    H_KV,
    SPLITS,
    BLOCK: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    t = tl.program_id(1)
    split = tl.program_id(2)
    b = pid_bh // H_KV
    h = pid_bh % H_KV
    pos = S - T + t
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_g = offs_g < G
    mask_d = offs_d < D
    q_ptr = Q + b * stride_qb + (h * G + offs_g[:, None]) * stride_qh + t * stride_qt + offs_d[None, :]
    q = tl.load(q_ptr, mask=mask_g[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    m_i = tl.full([BLOCK_G], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_kb + h * stride_kh
    idx_base = IDX + b * stride_ib + h * stride_ih + t * stride_it
    first = split * PER_SPLIT
    last = tl.minimum(first + PER_SPLIT, SLOTS)
    for slot in range(first, last):
        blk = tl.load(idx_base + slot)
        keypos = blk * BLOCK + offs_n
        ok = (offs_n < BLOCK) & (keypos >= 0) & (keypos <= pos)  # blk = -1: unused slot
        kv_off = keypos[:, None] * stride_ks + offs_d[None, :]
        kmask = ok[:, None] & mask_d[None, :]
        kb = tl.load(k_base + kv_off, mask=kmask, other=0.0).to(tl.float32)
        vb = tl.load(v_base + kv_off, mask=kmask, other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(kb), input_precision="ieee") * scale
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p, vb, input_precision="ieee")
        m_i = m_new
    # partial results of this split: unnormalised acc, running max and sum (combined in torch)
    row = (pid_bh * T + t) * SPLITS + split
    tl.store(ACC + row * BLOCK_G * BLOCK_D + offs_g[:, None] * BLOCK_D + offs_d[None, :], acc)
    tl.store(ML + row * 2 * BLOCK_G + offs_g, m_i)
    tl.store(ML + row * 2 * BLOCK_G + BLOCK_G + offs_g, l_i)


def _pow2(n: int) -> int:
    return max(16, 1 << (max(1, n) - 1).bit_length())


def sparse_blocks_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    block_size: int,
    scale: float,
    splits: int | None = None,
) -> torch.Tensor:
    """Stage 2 over chosen blocks: idx/valid `[B, Hkv, T, slots]` from `select_blocks`. Returns fp32.

    The slots of each query are split over `splits` programs (flash-decoding) so that decode, with only
    B x Hkv x T rows of work, still fills a GPU; the partial softmax states are merged here.
    """
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    slots = idx.shape[-1]
    if splits is None:
        splits = max(1, min(slots, 256 // max(1, b * hkv * t)))
    per_split = -(-slots // splits)
    splits = -(-slots // per_split)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    idx = torch.where(valid, idx, torch.full_like(idx, -1)).to(torch.int32).contiguous()
    bg, bd = _pow2(g), _pow2(d)
    acc = torch.empty(b * hkv, t, splits, bg, bd, dtype=torch.float32, device=q.device)
    ml = torch.empty(b * hkv, t, splits, 2, bg, dtype=torch.float32, device=q.device)
    _sparse_block_attn[(b * hkv, t, splits)](
        q,
        k,
        v,
        idx,
        acc,
        ml,
        t,
        s,
        slots,
        per_split,
        g,
        d,
        scale,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        idx.stride(0),
        idx.stride(1),
        idx.stride(2),
        hkv,
        splits,
        BLOCK=block_size,
        BLOCK_G=bg,
        BLOCK_D=bd,
        BLOCK_N=_pow2(block_size),
    )
    m, l_sum = ml[:, :, :, 0], ml[:, :, :, 1]  # [B*Hkv, T, splits, BG]
    m_all = m.amax(2, keepdim=True)
    w = torch.exp(m - m_all)
    out = (acc * w[..., None]).sum(2) / (l_sum * w).sum(2)[..., None]  # [B*Hkv, T, BG, BD]
    out = out[:, :, :g, :d].reshape(b, hkv, t, g, d).permute(0, 1, 3, 2, 4)
    return out.reshape(b, hq, t, d)


def infllmv2_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sp: SparseConfig,
    ck: torch.Tensor | None = None,
    scale: float | None = None,
    score_q: torch.Tensor | None = None,
    score_k: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `infllmv2_vectorized`; selection in torch, attention in Triton."""
    s = k.shape[2]
    if 0 <= sp.dense_len and s < sp.dense_len:
        return dense_attention(q, k, v, scale=scale)
    t = q.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if ck is None:
        ck = compress_keys_padded(k if score_k is None else score_k, sp)
    score_q = q if score_q is None else score_q
    outs = []
    for start in range(0, t, QUERY_CHUNK):
        end = min(t, start + QUERY_CHUNK)
        s_c = s - t + end
        ck_c = ck[:, :, : num_kernels(s_c, sp.kernel_size, sp.kernel_stride)]
        idx, valid = select_blocks(block_scores(score_q[:, :, start:end], ck_c, s_c, sp), sp)
        outs.append(
            sparse_blocks_triton(q[:, :, start:end], k[:, :, :s_c], v[:, :, :s_c], idx, valid, sp.block_size, scale)
        )
    return torch.cat(outs, dim=2).to(q.dtype)
