"""The `ai.edgecpm::InfLLMv2Attention` ONNX function: InfLLM v2 sparse attention in standard ONNX ops.

Inputs q `[B,Hq,T,D]`, k, v `[B,Hkv,S,D]` (the whole present cache) and ck `[B,Hkv,NC,D]`: the compressed keys
of the complete key windows, kept as graph state by the decoder (`onnx_infllmv2_state`), so the function never
pools keys itself.

The body is not written by hand: it is the runtime's own vectorized torch implementation
(`edgecpm.runtime_kernels`), traced by `torch.onnx.export(dynamo=True)` with dynamic T and S and turned into a
model-local FunctionProto of the same domain and name as the node. Any ONNX runtime inlines and runs it (real
sparse attention: key compression, block scores, top-k, gather, attention over the chosen blocks, dense below
`dense_len`); a runtime with a registered kernel for the op uses the kernel instead (ORT prefers kernels over
functions). Node attributes carry the sparse settings for such kernels; the body has them baked in.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from typing import Any

import onnx
import torch
from onnx import helper

from edgecpm.config import SparseConfig
from edgecpm.exporters.onnx_decoder import SPARSE_DOMAIN, SPARSE_OP

ATTRIBUTES = ("kernel_size", "kernel_stride", "init_blocks", "block_size", "window_size", "topk", "dense_len")
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sparse_state_fn(sparse: SparseConfig) -> Callable[..., torch.Tensor]:
    """Sparse attention over the given compressed keys (the runtime's traced sparse path, no dense switch).

    ck holds the complete windows only; it is zero-padded to ceil(S/bs) * bs/st windows (the static size the
    block scoring reshapes to). The padding windows reach past the last key, so no query ever sees them.
    """
    from edgecpm.runtime_kernels.infllmv2_vectorized import sparse_attention_traced

    sp = sparse
    r = sp.block_size // sp.kernel_stride

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ck: torch.Tensor) -> torch.Tensor:
        b, h, _, d = ck.shape
        n_ck = (k.shape[2] + sp.block_size - 1) // sp.block_size * r
        padded = torch.cat([ck, ck.new_zeros(b, h, n_ck, d)], dim=2)[:, :, :n_ck]
        return sparse_attention_traced(q, k, v, padded, sp)

    return fn


def dense_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from edgecpm.runtime_kernels import dense_attention

    return dense_attention(q, k, v)


class _Wrap(torch.nn.Module):
    def __init__(self, fn: AttentionFn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.fn(q, k, v)


class _WrapState(_Wrap):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ck: torch.Tensor) -> torch.Tensor:
        return self.fn(q, k, v, ck)


def _sort_stable(self: Any, stable: Any = None, dim: int = -1, descending: bool = False) -> Any:
    """aten.sort(stable=True) as ONNX TopK over the whole axis (TopK breaks ties by lower index: stable)."""
    from onnxscript import opset18 as op

    k = op.Reshape(op.Gather(op.Shape(self), op.Constant(value_int=dim)), op.Constant(value_ints=[1]))
    values, indices = op.TopK(self, k, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


def trace(
    fn: AttentionFn,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    opset: int,
    t: int,
    s: int,
    s_min: int = 2,
    ck_len: int | None = None,
) -> onnx.ModelProto:
    """`torch.onnx.export(dynamo=True)` of `fn(q, k, v)` with dynamic B, T and S (S >= s_min); with `ck_len`,
    of `fn(q, k, v, ck)` with a dynamic number of compressed keys as well."""
    q = torch.randn(2, num_heads, t, head_dim)
    k = torch.randn(2, num_kv_heads, s, head_dim)
    v = torch.randn(2, num_kv_heads, s, head_dim)
    batch, tdim = torch.export.Dim("batch"), torch.export.Dim("t")
    sdim = torch.export.Dim("s", min=max(2, s_min))
    shapes = {"q": {0: batch, 2: tdim}, "k": {0: batch, 2: sdim}, "v": {0: batch, 2: sdim}}
    args: tuple[torch.Tensor, ...] = (q, k, v)
    names = ["q", "k", "v"]
    if ck_len is not None:
        args += (torch.randn(2, num_kv_heads, ck_len, head_dim),)
        shapes["ck"] = {0: batch, 2: torch.export.Dim("nc")}
        names.append("ck")
    table = {torch.ops.aten.sort.stable: _sort_stable}
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        torch.no_grad(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            (_WrapState if ck_len is not None else _Wrap)(fn),
            args,
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=shapes,
            input_names=names,
            output_names=["out"],
            custom_translation_table=table,
            verbose=False,
            optimize=True,
        )
    model = program.model_proto
    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    return model


def _as_branch(model: onnx.ModelProto, prefix: str) -> onnx.GraphProto:
    """A traced graph as an `If` branch reading q, k, v from the enclosing scope (internal names prefixed)."""
    outer = {i.name for i in model.graph.input}

    def rename(name: str) -> str:
        return name if (not name or name in outer) else prefix + name

    nodes = [helper.make_node("Constant", [], [rename(init.name)], value=init) for init in model.graph.initializer]
    for node in model.graph.node:
        n = onnx.NodeProto()
        n.CopyFrom(node)
        n.ClearField("input")
        n.ClearField("output")
        n.input.extend(rename(x) for x in node.input)
        n.output.extend(rename(x) for x in node.output)
        n.name = prefix + node.name
        nodes.append(n)
    out = onnx.ValueInfoProto()
    out.CopyFrom(model.graph.output[0])
    out.name = rename(out.name)
    return helper.make_graph(nodes, prefix + "branch", [], [out])


def sparse_function(
    sparse: SparseConfig, num_heads: int, num_kv_heads: int, head_dim: int, opset: int
) -> onnx.FunctionProto:
    """`ai.edgecpm::InfLLMv2Attention(q, k, v, ck) -> out`: If(S < dense_len, dense body, sparse body).

    Both bodies are traced from the runtime's torch code; the sparse one with S >= dense_len, so its trace
    holds no dense fallback of its own. Only the taken branch runs.
    """
    from edgecpm.runtime_kernels.infllmv2_vectorized import num_kernels

    s_min = max(sparse.dense_len, sparse.kernel_size + sparse.block_size, 2)
    s_example = s_min + sparse.block_size + 3
    sparse_model = trace(
        sparse_state_fn(sparse),
        num_heads,
        num_kv_heads,
        head_dim,
        opset,
        t=3,
        s=s_example,
        s_min=s_min if sparse.dense_len >= 0 else 2,
        ck_len=num_kernels(s_example, sparse.kernel_size, sparse.kernel_stride),
    )
    sparse_branch = _as_branch(sparse_model, "sparse/")
    opsets = {o.domain: o.version for o in sparse_model.opset_import}
    inputs = ["q", "k", "v", "ck"]
    if sparse.dense_len <= 0:  # always sparse
        body = list(sparse_branch.node) + [helper.make_node("Identity", [sparse_branch.output[0].name], ["out"])]
        return helper.make_function(
            SPARSE_DOMAIN,
            SPARSE_OP,
            inputs,
            ["out"],
            body,
            [helper.make_opsetid(d, v) for d, v in opsets.items()],
            attributes=list(ATTRIBUTES),
        )
    dense_model = trace(dense_fn, num_heads, num_kv_heads, head_dim, opset, t=3, s=7)
    for o in dense_model.opset_import:
        opsets.setdefault(o.domain, o.version)
    dense_branch = _as_branch(dense_model, "dense/")
    body = [
        helper.make_node("Shape", ["k"], ["k_shape"]),
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two", onnx.TensorProto.INT64, [], [2])),
        helper.make_node("Gather", ["k_shape", "two"], ["s_len"], axis=0),
        helper.make_node(
            "Constant",
            [],
            ["dense_len"],
            value=helper.make_tensor("dense_len", onnx.TensorProto.INT64, [], [sparse.dense_len]),
        ),
        helper.make_node("Less", ["s_len", "dense_len"], ["use_dense"]),
        helper.make_node("If", ["use_dense"], ["out"], then_branch=dense_branch, else_branch=sparse_branch),
    ]
    return helper.make_function(
        SPARSE_DOMAIN,
        SPARSE_OP,
        inputs,
        ["out"],
        body,
        [helper.make_opsetid(d, v) for d, v in opsets.items()],
        attributes=list(ATTRIBUTES),
    )


def sparse_attributes(sparse: SparseConfig) -> dict[str, int]:
    """The node attributes: the op contract's integer arguments."""
    return {name: int(getattr(sparse, name)) for name in ATTRIBUTES}
