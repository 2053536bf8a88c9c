"""torch.export -> edge -> XNNPACK -> `.pte` bytes: the lowering stages of the ExecuTorch exporter.

Kept apart from the exporter's file handling so the stages read top to bottom (the pattern of ExecuTorch's
`examples/models/llama` export): export with a dynamic prefill length, decompose only the ops
that must be decomposed (InfLLM v2 into its vectorized core-ATen body; the full core table breaks XNNPACK's
linear matching), partition dynamically-quantized linears first and everything else second, plan memory
without allocating graph inputs, and write the runner's metadata as constant methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edgecpm.backends.executorch_ops import import_runtime_ops
from edgecpm.errors import EdgecpmError


def stable_sort_by_rank(
    x: torch.Tensor, *, stable: bool | None = None, dim: int = -1, descending: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """`aten.sort.stable` from comparisons, gather and scatter (ExecuTorch's runtime has no sort kernel).

    Element i goes to rank #{j: x_j before x_i} + #{j < i: x_j == x_i}: ties keep index order, exactly
    as a stable sort. Quadratic in the sorted length, which for InfLLM v2 block selection is the number of
    key blocks (context / block_size).
    """
    x_last = x.movedim(dim, -1)
    n = x_last.shape[-1]
    a, b = x_last[..., :, None], x_last[..., None, :]  # a = x_i, b = x_j
    before = (b > a) if descending else (b < a)
    idx = torch.arange(n, device=x.device)
    ties = (b == a) & (idx[None, :] < idx[:, None])
    rank = before.sum(-1) + ties.sum(-1)
    order = torch.zeros_like(rank).scatter(-1, rank, idx.expand_as(rank).contiguous())
    values = torch.gather(x_last, -1, order)
    return values.movedim(-1, dim), order.movedim(-1, dim)


def sparse_decompositions(mode: str) -> dict[Any, Callable[..., Any]]:
    """How `edgecpm::infllmv2_attention` is lowered: "decompose" = its vectorized body in core ATen ops.

    The body's stable sort (block selection) is itself decomposed, since ExecuTorch has no sort kernel.
    "compiled": nothing to decompose (the sparse branch is one `edgecpm::infllmv2_sparse_cache` node, which
    `to_executorch` turns into its `.out` overload, the kernel library's entry point).
    """
    if mode == "compiled":
        return {}
    if mode == "decompose":
        from edgecpm.runtime_kernels import infllmv2_decomposition  # the op's one definition

        return {
            torch.ops.edgecpm.infllmv2_attention.default: infllmv2_decomposition,
            torch.ops.aten.sort.stable: stable_sort_by_rank,
        }
    raise EdgecpmError(f"sparse kernel mode {mode!r}; expected 'decompose' or 'compiled'")


def _sparse_safe_configs() -> list[Any]:
    """XNNPACK op configs for programs with the decomposed sparse op: no permute.

    The sparse body's layout permutes of KV-cache slices can end up as a pass-through delegate output,
    which XNNPACK rejects ("Output node ... is already in the inputs"); the portable kernels run them.
    """
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS

    return [c for c in ALL_PARTITIONER_CONFIGS if c.__name__ != "PermuteConfig"]


def expand_sym_sums(gm: torch.fx.GraphModule) -> None:
    """Rewrite `torch.sym_sum(xs)` nodes as chained `operator.add`, in gm and its `torch.cond` branches.

    Dynamo emits sym_sum for integer arithmetic on unbacked sizes (the sparse branch's context length);
    ExecuTorch's edge passes only know the operator module's arithmetic.
    """
    import operator

    for mod in gm.modules():
        if not isinstance(mod, torch.fx.GraphModule):
            continue
        changed = False
        for node in list(mod.graph.nodes):
            if node.op == "call_function" and node.target is torch.sym_sum:
                terms = list(node.args[0])
                with mod.graph.inserting_before(node):
                    acc = terms[0]
                    for term in terms[1:]:
                        acc = mod.graph.call_function(operator.add, (acc, term))
                        acc.meta = dict(node.meta)
                node.replace_all_uses_with(acc)
                mod.graph.erase_node(node)
                changed = True
        if changed:
            mod.recompile()


def lower_to_pte(
    module: nn.Module,
    max_seq_len: int,
    metadata: dict[str, Any],
    *,
    quantized: bool,
    has_sparse: bool = False,
    sparse_mode: str = "decompose",
) -> bytes:
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
    if has_sparse:
        expand_sym_sums(ep.graph_module)
    partitioners = ([XnnpackDynamicallyQuantizedPartitioner()] if quantized else []) + [
        XnnpackPartitioner(configs=_sparse_safe_configs()) if has_sparse else XnnpackPartitioner()
    ]
    edge = to_edge_transform_and_lower(
        ep,
        partitioner=partitioners,
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
        constant_methods=metadata,
    )
    program = edge.to_executorch(
        ExecutorchBackendConfig(
            extract_delegate_segments=True,
            do_quant_fusion_and_const_prop=quantized,
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
        )
    )
    return program.buffer
