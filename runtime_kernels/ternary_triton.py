"""Ternary matmul as a Triton kernel: the packed 2-bit codes are unpacked in registers inside the K loop.

out[m, n] = sum_k x[m, k] * (code[n, k] - 1) * scale[n, k // group], with `code` read from byte k // 4 of row
n at bit 2 * (k % 4) (layout in `ternary.py`). The full-precision weight never exists in memory, which is the
point on a memory-bound device. CUDA, or CPU tensors under `TRITON_INTERPRET=1`.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl


@triton.jit
def _ternary_mm(
    X,
    P,
    SC,
    O,
    M,
    N,
    K,
    GROUP,
    stride_xm,
    stride_pn,
    stride_sn,
    stride_om,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = offs_m < M
    mn = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < K
        x = tl.load(X + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mm[:, None] & mk[None, :], other=0.0)
        wmask = mn[:, None] & mk[None, :]
        byte = tl.load(P + offs_n[:, None] * stride_pn + (offs_k // 4)[None, :], mask=wmask, other=0)
        code = (byte.to(tl.int32) >> ((offs_k % 4) * 2)[None, :]) & 3
        scale = tl.load(SC + offs_n[:, None] * stride_sn + (offs_k // GROUP)[None, :], mask=wmask, other=0.0)
        w = (code - 1).to(tl.float32) * scale
        acc += tl.dot(x, tl.trans(w), input_precision="ieee")
    tl.store(O + offs_m[:, None] * stride_om + offs_n[None, :], acc, mask=mm[:, None] & mn[None, :])


def ternary_matmul_triton(x: torch.Tensor, tw: Any) -> torch.Tensor:
    """x `[..., K]` @ Wᵀ for a packed ternary W `[N, K]` (a `ternary.TernaryWeight`) -> `[..., N]` fp32."""
    n, k = tw.shape
    xf = x.float().reshape(-1, k).contiguous()
    m = xf.shape[0]
    packed = tw.packed.to(x.device).contiguous()
    scales = tw.scales.to(x.device).contiguous()
    out = torch.empty(m, n, device=x.device)
    block_m = 16 if m <= 16 else 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, 64))
    _ternary_mm[grid](
        xf,
        packed,
        scales,
        out,
        m,
        n,
        k,
        tw.group,
        xf.stride(0),
        packed.stride(0),
        scales.stride(0),
        out.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=64,
        BLOCK_K=64,
    )
    return out.reshape(*x.shape[:-1], n)
