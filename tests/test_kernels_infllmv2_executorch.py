"""The compiled InfLLM v2 kernel inside the ExecuTorch runtime, against the loop reference.

A program holding `torch.ops.edgecpm.infllmv2_sparse_cpu` (dynamic T and S) is exported, lowered with
`to_executorch` (which rewrites it to the `.out` overload) and run by ExecuTorch's own runtime with the
kernel library built from `csrc/infllmv2_executorch.cpp` loaded; outputs are compared with
`infllmv2_reference`. The library builds once per machine (seconds), then loads from the kernel cache.
"""

from __future__ import annotations

import importlib.util
import math
import shutil

import pytest
import torch

from edgecpm.config import SparseConfig
from edgecpm.runtime_kernels.infllmv2_reference import infllmv2_reference
from edgecpm.runtime_kernels.infllmv2_vectorized import compress_keys

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="executorch not installed"),
    pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"),
    pytest.mark.usefixtures("one_thread"),
]

SP = SparseConfig(kernel_size=32, kernel_stride=16, init_blocks=1, block_size=64, window_size=128, topk=8, dense_len=-1)


class _Sparse(torch.nn.Module):
    def forward(self, q, k, v, ck):
        return torch.ops.edgecpm.infllmv2_sparse_cpu(
            q,
            k,
            v,
            ck,
            q,
            SP.kernel_size,
            SP.kernel_stride,
            SP.init_blocks,
            SP.block_size,
            SP.window_size,
            SP.topk,
            1.0 / math.sqrt(q.shape[-1]),
        )


@pytest.fixture(scope="module")
def method():
    from edgecpm.runtime_kernels.infllmv2_executorch import load_runtime_kernels

    load_runtime_kernels()
    from executorch.exir import EdgeCompileConfig, to_edge
    from executorch.runtime import Runtime

    q, k, v = torch.randn(1, 32, 8, 128), torch.randn(1, 2, 1200, 128), torch.randn(1, 2, 1200, 128)
    ck = compress_keys(k, SP.kernel_size, SP.kernel_stride)
    t, s, nc = torch.export.Dim("t", max=64), torch.export.Dim("s", min=128, max=4096), torch.export.Dim("nc", max=256)
    shapes = {"q": {2: t}, "k": {2: s}, "v": {2: s}, "ck": {2: nc}}
    ep = torch.export.export(_Sparse(), (q, k, v, ck), dynamic_shapes=shapes)
    nodes = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert nodes == [torch.ops.edgecpm.infllmv2_sparse_cpu.default]  # one node, no decomposition
    buffer = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch().buffer
    program = Runtime.get().load_program(buffer)
    # the loaded method reads the program and its buffer: both must outlive it
    yield program.load_method("forward")
    del program, buffer


@pytest.mark.parametrize("s,t", [(1500, 1), (1500, 40), (2100, 1), (700, 64)])
def test_executorch_runtime_runs_the_kernel(method, s: int, t: int) -> None:
    """8B head layout (32 query heads, 2 KV heads, dim 128): decode steps and prefill chunks."""
    gen = torch.Generator().manual_seed(s + t)
    q = torch.randn(1, 32, t, 128, generator=gen)
    k = torch.randn(1, 2, s, 128, generator=gen)
    v = torch.randn(1, 2, s, 128, generator=gen)
    ck = compress_keys(k, SP.kernel_size, SP.kernel_stride).contiguous()
    out = method.execute([q, k, v, ck])[0]
    ref = infllmv2_reference(q, k, v, SP)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < 1e-4
