"""`torch.library` definitions of the kernels, so `torch.export` keeps each as one node.

`edgecpm::infllmv2_attention(q, k, v, kernel_size, kernel_stride, init_blocks, block_size, window_size,
topk, dense_len) -> Tensor` is stateless (it recomputes the compressed keys from k). Its CPU kernel is the
vectorized torch code, its CUDA kernel the Triton one when Triton imports, and the fake kernel returns
`empty_like(q)`.
Exporters that need the body (ONNX function, ExecuTorch decomposition) trace `infllmv2_decomposition`, which
has the op's exact signature and is written in export-friendly torch ops.
"""

from __future__ import annotations

import torch

from ..config import SparseConfig
from .infllmv2_vectorized import infllmv2_vectorized


def _sparse(kernel_size: int, kernel_stride: int, init_blocks: int, block_size: int, window_size: int,
            topk: int, dense_len: int) -> SparseConfig:
    return SparseConfig(kernel_size=kernel_size, kernel_stride=kernel_stride, init_blocks=init_blocks,
                        block_size=block_size, window_size=window_size, topk=topk, dense_len=dense_len)


def infllmv2_decomposition(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int,
                           kernel_stride: int, init_blocks: int, block_size: int, window_size: int, topk: int,
                           dense_len: int) -> torch.Tensor:
    """The op's body in plain torch ops (vectorized implementation)."""
    sp = _sparse(kernel_size, kernel_stride, init_blocks, block_size, window_size, topk, dense_len)
    return infllmv2_vectorized(q, k, v, sp)


@torch.library.custom_op("edgecpm::infllmv2_attention", mutates_args=())
def infllmv2_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int,
                          kernel_stride: int, init_blocks: int, block_size: int, window_size: int, topk: int,
                          dense_len: int) -> torch.Tensor:
    """InfLLM v2 sparse attention; layouts as `edgecpm.runtime_kernels.infllmv2_attention`."""
    return infllmv2_decomposition(q, k, v, kernel_size, kernel_stride, init_blocks, block_size, window_size,
                                  topk, dense_len).contiguous()


@infllmv2_attention_op.register_fake
def _infllmv2_fake(q, k, v, kernel_size, kernel_stride, init_blocks, block_size, window_size, topk,
                   dense_len):
    return torch.empty_like(q)


@infllmv2_attention_op.register_kernel("cuda")
def _infllmv2_cuda(q, k, v, kernel_size, kernel_stride, init_blocks, block_size, window_size, topk,
                   dense_len):
    sp = _sparse(kernel_size, kernel_stride, init_blocks, block_size, window_size, topk, dense_len)
    from .registry import triton_available

    if triton_available():
        from .infllmv2_triton import infllmv2_triton

        return infllmv2_triton(q, k, v, sp).contiguous()
    return infllmv2_vectorized(q, k, v, sp).contiguous()
