"""torch.export -> edge -> XNNPACK -> `.pte` bytes: the lowering stages of the ExecuTorch exporter.

Kept apart from the exporter's file handling so the stages read top to bottom (the pattern tested in
../shared/reference/executorch.md §1.6): export with a dynamic prefill length, decompose only the ops
that must be decomposed (InfLLM v2 into its vectorized core-ATen body; the full core table breaks XNNPACK's
linear matching), partition dynamically-quantized linears first and everything else second, plan memory
without allocating graph inputs, and write the runner's metadata as constant methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import EdgecpmError


def import_runtime_ops() -> None:
    """The AOT + runtime kernels of `llama::*` (KV cache, SDPA) and `quantized_decomposed::*` (embeddings)."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    import executorch.kernels.quantized  # noqa: F401


def sparse_decompositions(mode: str) -> dict[Any, Callable[..., torch.Tensor]]:
    """How `edgecpm::infllmv2_attention` is lowered: "decompose" = its vectorized body in core ATen ops."""
    if mode == "decompose":
        return {torch.ops.edgecpm.infllmv2_attention.default: _infllmv2_vectorized}
    raise EdgecpmError(f"sparse kernel mode {mode!r}; expected 'decompose'")


def _infllmv2_vectorized(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int,
                         kernel_stride: int, init_blocks: int, block_size: int, window_size: int, topk: int,
                         dense_len: int) -> torch.Tensor:
    """The op's body: `runtime_kernels.infllmv2_attention` (its one definition), vectorized implementation."""
    from ..config import SparseConfig
    from ..runtime_kernels import infllmv2_attention

    sparse = SparseConfig(kernel_size=kernel_size, kernel_stride=kernel_stride, init_blocks=init_blocks,
                          block_size=block_size, window_size=window_size, topk=topk, dense_len=dense_len)
    return infllmv2_attention(q, k, v, sparse, impl="vectorized")


def lower_to_pte(module: nn.Module, max_seq_len: int, metadata: dict[str, Any], *, quantized: bool,
                 has_sparse: bool = False, sparse_mode: str = "decompose") -> bytes:
    """Export `module.forward(tokens[1,S], input_pos[1])` with 1 <= S <= max_seq_len to a `.pte` buffer."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackDynamicallyQuantizedPartitioner,
        XnnpackPartitioner,
    )
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass
    from torch.export import Dim

    import_runtime_ops()
    example = (torch.zeros(1, min(2, max_seq_len), dtype=torch.long), torch.tensor([0], dtype=torch.long))
    seq = Dim("seq_len", min=1, max=max_seq_len)
    with torch.no_grad():
        ep = torch.export.export(module, example, dynamic_shapes=({1: seq}, None), strict=True)
    decomps = sparse_decompositions(sparse_mode) if has_sparse else {}
    ep = ep.run_decompositions(decomps)
    partitioners = ([XnnpackDynamicallyQuantizedPartitioner()] if quantized else []) + [XnnpackPartitioner()]
    edge = to_edge_transform_and_lower(ep, partitioner=partitioners,
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False),
                                       constant_methods=metadata)
    program = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True, do_quant_fusion_and_const_prop=quantized,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
        sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass()))
    return program.buffer
