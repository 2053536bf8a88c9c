"""Lightning attention as a Triton kernel: chunked simple-GLA with the state kept on chip.

One program owns one (batch, head, value-column tile) and walks the sequence chunk by chunk, keeping its
`[Dk, tile]` slice of the state in registers: per chunk it adds the intra-chunk part (q kᵀ under the decay
mask, times v) and the carried part (decayed q times the state), then folds the chunk into the state. The math
is the chunked form of `lightning_vectorized`; CUDA, or CPU tensors under `TRITON_INTERPRET=1`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _lightning_chunked(
    Q, K, V, G, S0, O, SOUT, T, H, DK, DV, scale, BLOCK_T: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr
):
    bh = tl.program_id(0)
    pv = tl.program_id(1)
    g = tl.load(G + bh % H)
    offs_t = tl.arange(0, BLOCK_T)
    offs_k = tl.arange(0, BLOCK_DK)
    offs_v = pv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    mk = offs_k < DK
    mv = offs_v < DV
    s_off = bh * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    state = tl.load(S0 + s_off, mask=mk[:, None] & mv[None, :], other=0.0)
    fi = offs_t.to(tl.float32)
    diff = fi[:, None] - fi[None, :]
    intra = tl.where(diff >= 0, tl.exp(g * tl.maximum(diff, 0.0)), 0.0)
    for t0 in range(0, T, BLOCK_T):
        tt = t0 + offs_t
        mt = tt < T
        qk_off = bh * T * DK + tt[:, None] * DK + offs_k[None, :]
        q = tl.load(Q + qk_off, mask=mt[:, None] & mk[None, :], other=0.0)
        k = tl.load(K + qk_off, mask=mt[:, None] & mk[None, :], other=0.0)
        v = tl.load(V + bh * T * DV + tt[:, None] * DV + offs_v[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        n = tl.minimum(T - t0, BLOCK_T).to(tl.float32)
        att = tl.dot(q, tl.trans(k), input_precision="ieee") * intra
        o = tl.dot(att, v, input_precision="ieee")
        o += tl.dot(q * tl.exp(g * (fi + 1.0))[:, None], state, input_precision="ieee")
        tl.store(O + bh * T * DV + tt[:, None] * DV + offs_v[None, :], o * scale, mask=mt[:, None] & mv[None, :])
        k_decay = tl.where(mt, tl.exp(g * (n - 1.0 - fi)), 0.0)
        state = state * tl.exp(g * n) + tl.dot(tl.trans(k * k_decay[:, None]), v, input_precision="ieee")
    tl.store(SOUT + s_off, state, mask=mk[:, None] & mv[None, :])


def _pow2(n: int) -> int:
    return max(16, 1 << (max(1, n) - 1).bit_length())


def lightning_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float,
    state: torch.Tensor | None = None,
    chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `lightning_vectorized`: (out `[B, H, T, Dv]` fp32, final state fp32)."""
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    q, k, v = (x.float().contiguous() for x in (q, k, v))
    s0 = torch.zeros(b, h, dk, dv, device=q.device) if state is None else state.float().contiguous()
    out = torch.empty(b, h, t, dv, device=q.device)
    s_out = torch.empty_like(s0)
    block_dv = min(64, _pow2(dv))
    grid = (b * h, triton.cdiv(dv, block_dv))
    _lightning_chunked[grid](
        q,
        k,
        v,
        log_decay.float().to(q.device).contiguous(),
        s0,
        out,
        s_out,
        t,
        h,
        dk,
        dv,
        scale,
        BLOCK_T=_pow2(min(chunk, max(t, 1))),
        BLOCK_DK=_pow2(dk),
        BLOCK_DV=block_dv,
    )
    return out, s_out
