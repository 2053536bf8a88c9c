"""The `ai.edgecpm::InfLLMv2Attention` ONNX function: InfLLM v2 sparse attention in standard ONNX ops.

The body is not written by hand: it is the runtime's own vectorized torch implementation
(`edgecpm.runtime_kernels`), traced by `torch.onnx.export(dynamo=True)` with dynamic T and S and turned into a
model-local FunctionProto of the same domain and name as the node. Any ONNX runtime inlines and runs it (real
sparse attention: key compression, block scores, top-k, gather, attention over the chosen blocks, dense below
`dense_len`); a runtime with a registered kernel for the op uses the kernel instead (ORT prefers kernels over
functions). Node attributes carry the sparse settings for such kernels; the body has them baked in.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import astuple

import onnx
import torch
from onnx import helper

from ..config import SparseConfig
from ..errors import EdgecpmError
from .onnx_decoder import SPARSE_DOMAIN, SPARSE_OP

ATTRIBUTES = ("kernel_size", "kernel_stride", "init_blocks", "block_size", "window_size", "topk", "dense_len")
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def runtime_sparse_fn(sparse: SparseConfig) -> AttentionFn:
    """The runtime's vectorized (export-friendly) InfLLM v2 attention with `sparse` bound."""
    try:
        from ..runtime_kernels import infllmv2_attention
    except ImportError:
        raise EdgecpmError("this build of edgecpm.runtime_kernels has no InfLLM v2 kernel; cannot export "
                           "sparse attention") from None

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return infllmv2_attention(q, k, v, sparse, impl="vectorized")

    return fn


class _Wrap(torch.nn.Module):
    def __init__(self, fn: AttentionFn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.fn(q, k, v)


def function_from_torch(fn: AttentionFn, num_heads: int, num_kv_heads: int, head_dim: int, opset: int,
                        example_len: tuple[int, int] = (3, 7), domain: str = SPARSE_DOMAIN,
                        name: str = SPARSE_OP) -> onnx.FunctionProto:
    """Trace `fn(q [B,Hq,T,D], k [B,Hkv,S,D], v) -> [B,Hq,T,D]` into a FunctionProto (dynamic B, T, S)."""
    t, s = example_len
    q = torch.randn(2, num_heads, t, head_dim)
    k = torch.randn(2, num_kv_heads, s, head_dim)
    v = torch.randn(2, num_kv_heads, s, head_dim)
    batch, tdim, sdim = torch.export.Dim("batch"), torch.export.Dim("t"), torch.export.Dim("s")
    shapes = {"q": {0: batch, 2: tdim}, "k": {0: batch, 2: sdim}, "v": {0: batch, 2: sdim}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_Wrap(fn), (q, k, v), dynamo=True, opset_version=opset,
                                    dynamic_shapes=shapes, input_names=["q", "k", "v"], output_names=["out"],
                                    verbose=False, optimize=True)
    model = program.model_proto
    return graph_to_function(model, domain, name)


def graph_to_function(model: onnx.ModelProto, domain: str, name: str) -> onnx.FunctionProto:
    """Initializers become Constant nodes; nested local functions are inlined first."""
    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    graph = model.graph
    nodes = [helper.make_node("Constant", [], [init.name], value=init) for init in graph.initializer]
    nodes.extend(graph.node)
    opsets = [o for o in model.opset_import]
    return helper.make_function(domain, name, [i.name for i in graph.input], [o.name for o in graph.output],
                                nodes, opsets, attributes=list(ATTRIBUTES))


def sparse_attributes(sparse: SparseConfig) -> dict[str, int]:
    d = dict(zip(("kernel_size", "kernel_stride", "init_blocks", "block_size", "window_size", "topk",
                  "use_nope", "dense_len"), astuple(sparse)))
    return {k: int(d[k]) for k in ATTRIBUTES}
