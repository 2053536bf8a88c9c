"""The InfLLM v2 compressed-key cache as ONNX graph state: `past_key_values.N.compressed_keys` in,
`present.N.compressed_keys` out, extended per call by the key windows that became complete (the prefix is never
recompressed).

Kernel i is the mean of keys [i*st, i*st + ks) (ks = kernel_size, st = kernel_stride). With NC kernels in the
past state, the next one starts at key NC*st, so a call reads only the keys from there on: it sums them in
stride-long chunks and adds ks/st neighbouring chunk sums per new kernel (standard ops: Slice, Reshape,
ReduceSum, Add, Concat). Needs kernel_size % kernel_stride == 0 (true of the published 32/16).

The past input also has an empty initializer of the same name, so a runtime that does not feed it (ONNX
Runtime GenAI, which knows only the KV cache) gets a state of zero kernels every call: then every window is
pooled from the keys again, the stateless behaviour, with the same results. Batch 1 for that default.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from edgecpm.config import SparseConfig
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.onnx_graph import GraphBuilder

SUFFIX = ".compressed_keys"


def state_names(index: int) -> tuple[str, str]:
    return f"past_key_values.{index}{SUFFIX}", f"present.{index}{SUFFIX}"


def check_state_config(sp: SparseConfig) -> None:
    if sp.kernel_size % sp.kernel_stride:
        raise EdgecpmError(
            f"the ONNX compressed-key state needs kernel_size ({sp.kernel_size}) to be a multiple of "
            f"kernel_stride ({sp.kernel_stride})"
        )


def declare_state(g: GraphBuilder, index: int, num_kv_heads: int, head_dim: int) -> None:
    """The layer's state input (with its empty default) and output, `[B, Hkv, NC, D]` fp32."""
    past, present = state_names(index)
    g.add_input(past, TensorProto.FLOAT, ["batch_size", num_kv_heads, f"past_kernels_{index}", head_dim])
    g.initializer(past, np.zeros((1, num_kv_heads, 0, head_dim), dtype=np.float32))
    g.add_output(present, TensorProto.FLOAT, ["batch_size", num_kv_heads, f"total_kernels_{index}", head_dim])


def update_state(
    g: GraphBuilder, index: int, keys: str, sp: SparseConfig, head_dim: int, n: str, output: str | None = None
) -> str:
    """Emit `present = Concat(past, kernels completed by keys[NC*st:])`; `keys` is the whole present key
    cache `[B, Hkv, S, D]`. Returns the present state's name (`output`: another name, for an `If` branch)."""
    check_state_config(sp)
    past, present = state_names(index)
    present = output or present
    ks, st = sp.kernel_size, sp.kernel_stride
    r = ks // st
    two = g.const([2])
    shape_of = lambda x, tag: g.op("Shape", [x], name=f"{n}/{tag}/Shape")  # noqa: E731
    nc = g.op("Slice", [shape_of(past, "past"), two, g.const([3])], name=f"{n}/ck_past_len")
    offset = g.op("Mul", [nc, g.const([st])], name=f"{n}/ck_offset")
    tail = g.op("Slice", [keys, offset, g.const([np.iinfo(np.int64).max]), two], name=f"{n}/ck_tail")
    tail_shape = shape_of(tail, "tail")
    length = g.op("Slice", [tail_shape, two, g.const([3])], name=f"{n}/ck_tail_len")
    chunks_n = g.op("Div", [length, g.const([st])], name=f"{n}/ck_chunks")  # floor (non-negative)
    whole = g.op(
        "Slice",
        [tail, g.const([0]), g.op("Mul", [chunks_n, g.const([st])], name=f"{n}/ck_whole_len"), two],
        name=f"{n}/ck_whole",
    )
    target = g.op(
        "Concat",
        [g.op("Slice", [tail_shape, g.const([0]), two], name=f"{n}/ck_bh"), chunks_n, g.const([st, head_dim])],
        axis=0,
        name=f"{n}/ck_chunk_shape",
    )
    chunked = g.op("Reshape", [whole, target], name=f"{n}/ck_chunk_view")
    sums = g.op("ReduceSum", [chunked, g.const([3])], keepdims=0, name=f"{n}/ck_chunk_sums")  # [B, H, n, D]
    new = g.op(
        "Max", [g.op("Sub", [chunks_n, g.const([r - 1])], name=f"{n}/ck_new_raw"), g.const([0])], name=f"{n}/ck_new"
    )
    pooled = None
    for u in range(r):
        part = g.op(
            "Slice",
            [sums, g.const([u]), g.op("Add", [new, g.const([u])], name=f"{n}/ck_end{u}"), two],
            name=f"{n}/ck_part{u}",
        )
        pooled = part if pooled is None else g.op("Add", [pooled, part], name=f"{n}/ck_sum{u}")
    mean = g.op("Mul", [pooled, g.const(1.0 / ks, np.float32)], name=f"{n}/ck_mean")
    g.op("Concat", [past, mean], axis=2, outputs=[present], name=f"{n}/ck_present")
    return present
