"""`torch.library` definitions of the kernels, so `torch.export` keeps each as one node.

`edgecpm::infllmv2_attention(q, k, v, kernel_size, kernel_stride, init_blocks, block_size, window_size,
topk, dense_len) -> Tensor` is stateless (it recomputes the compressed keys from k). Its CPU kernel is the
vectorized torch code, its CUDA kernel the one `registry.resolve` picks (vectorized unless
`EDGECPM_KERNELS` opts into Triton), and the fake kernel returns
`empty_like(q)`.
Exporters that need the body (ONNX function, ExecuTorch decomposition) trace `infllmv2_decomposition`, which
has the op's exact signature and is written in export-friendly torch ops. `edgecpm::lightning_attention`
(stateless: the recurrent state is an input and an output) and `edgecpm::ternary_matmul` (packed uint8 codes
and fp32 scales) are defined the same way, with the vectorized code as their CPU kernel.
"""

from __future__ import annotations

import torch

from edgecpm.config import SparseConfig
from edgecpm.runtime_kernels.infllmv2_vectorized import infllmv2_vectorized


def _sparse(
    kernel_size: int, kernel_stride: int, init_blocks: int, block_size: int, window_size: int, topk: int, dense_len: int
) -> SparseConfig:
    return SparseConfig(
        kernel_size=kernel_size,
        kernel_stride=kernel_stride,
        init_blocks=init_blocks,
        block_size=block_size,
        window_size=window_size,
        topk=topk,
        dense_len=dense_len,
    )


def infllmv2_decomposition(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    kernel_stride: int,
    init_blocks: int,
    block_size: int,
    window_size: int,
    topk: int,
    dense_len: int,
) -> torch.Tensor:
    """The op's body in plain torch ops (vectorized implementation)."""
    sp = _sparse(kernel_size, kernel_stride, init_blocks, block_size, window_size, topk, dense_len)
    return infllmv2_vectorized(q, k, v, sp)


@torch.library.custom_op("edgecpm::infllmv2_attention", mutates_args=())
def infllmv2_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    kernel_stride: int,
    init_blocks: int,
    block_size: int,
    window_size: int,
    topk: int,
    dense_len: int,
) -> torch.Tensor:
    """InfLLM v2 sparse attention; layouts as `edgecpm.runtime_kernels.infllmv2_attention`."""
    return infllmv2_decomposition(
        q, k, v, kernel_size, kernel_stride, init_blocks, block_size, window_size, topk, dense_len
    ).contiguous()


@infllmv2_attention_op.register_fake
def _infllmv2_fake(q, k, v, kernel_size, kernel_stride, init_blocks, block_size, window_size, topk, dense_len):
    return torch.empty_like(q)


@infllmv2_attention_op.register_kernel("cuda")
def _infllmv2_cuda(q, k, v, kernel_size, kernel_stride, init_blocks, block_size, window_size, topk, dense_len):
    sp = _sparse(kernel_size, kernel_stride, init_blocks, block_size, window_size, topk, dense_len)
    from edgecpm.runtime_kernels.registry import resolve

    if resolve("infllmv2", q.device) == "triton":
        from edgecpm.runtime_kernels.infllmv2_triton import infllmv2_triton

        return infllmv2_triton(q, k, v, sp).contiguous()
    return infllmv2_vectorized(q, k, v, sp).contiguous()


@torch.library.custom_op("edgecpm::lightning_attention", mutates_args=())
def lightning_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, state: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lightning attention continuing from `state` `[B, H, Dk, Dv]`: returns (out `[B, H, T, Dv]`, new state)."""
    from edgecpm.runtime_kernels.lightning import lightning_vectorized

    out, new_state = lightning_vectorized(q, k, v, log_decay, scale, state)
    return out.contiguous(), new_state.contiguous()


@lightning_attention_op.register_fake
def _lightning_fake(q, k, v, log_decay, state, scale):
    b, h, t, _ = q.shape
    return q.new_empty(b, h, t, v.shape[-1], dtype=torch.float32), torch.empty_like(state, dtype=torch.float32)


@torch.library.custom_op("edgecpm::ternary_matmul", mutates_args=())
def ternary_matmul_op(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """x `[..., K]` times the packed ternary weight (uint8 `[N, K/4]`, scales `[N, K/group]`) -> `[..., N]` fp32."""
    from edgecpm.runtime_kernels.ternary import TernaryWeight, ternary_matmul_vectorized

    return ternary_matmul_vectorized(x, TernaryWeight(packed, scales, group)).contiguous()


@ternary_matmul_op.register_fake
def _ternary_fake(x, packed, scales, group):
    return x.new_empty(*x.shape[:-1], packed.shape[0], dtype=torch.float32)
