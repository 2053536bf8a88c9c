"""InfLLM v2 sparse attention: vectorized and Triton against the loop reference, decode state, planted needle.

Triton runs on CUDA when there is one, else on CPU tensors under TRITON_INTERPRET=1 (set before the kernel
module is imported, because `triton.jit` reads it when decorating).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from edgecpm.config import SparseConfig  # noqa: E402
from edgecpm.errors import EdgecpmError  # noqa: E402
from edgecpm.runtime_kernels import InfLLMv2State, dense_attention, infllmv2_attention  # noqa: E402
from edgecpm.runtime_kernels import infllmv2_vectorized as vec  # noqa: E402
from edgecpm.runtime_kernels.infllmv2_reference import _kernels, infllmv2_reference, selected_blocks  # noqa: E402
from edgecpm.runtime_kernels.registry import resolve  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")

# miniature of the published shape ratios (ks = 2 st, bs = 4 st): 6 free top-k blocks besides init + local
SMALL = SparseConfig(
    kernel_size=16, kernel_stride=8, init_blocks=1, block_size=32, window_size=32, topk=6, dense_len=256
)
PUBLISHED_RATIO = SparseConfig(
    kernel_size=32, kernel_stride=16, init_blocks=1, block_size=64, window_size=128, topk=8, dense_len=1024
)


def _inputs(g: int, s: int, t: int, d: int = 32, hkv: int = 2, seed: int = 0, b: int = 1):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hkv * g, t, d, generator=gen)
    k = torch.randn(b, hkv, s, d, generator=gen)
    v = torch.randn(b, hkv, s, d, generator=gen)
    return q, k, v


CASES = [(g, s, t) for g in (1, 4, 8, 16) for s, t in ((200, 200), (600, 1), (600, 70))] + [(4, 457, 457)]


@pytest.mark.parametrize("g,s,t", CASES)
def test_vectorized_matches_reference(g: int, s: int, t: int) -> None:
    q, k, v = _inputs(g, s, t, seed=g * 1000 + s + t)
    ref = infllmv2_reference(q, k, v, SMALL)
    out = infllmv2_attention(q, k, v, SMALL, impl="vectorized")
    assert out.shape == q.shape
    assert (out - ref).abs().max().item() < TOL
    if s >= SMALL.dense_len:  # really sparse: differs from dense attention
        assert (out - dense_attention(q, k, v)).abs().max().item() > 1e-2


@pytest.mark.parametrize("union_limit", [0, 100])
def test_vectorized_chunked_prefill_and_batch(monkeypatch, union_limit: int) -> None:
    """Eager prefill walks queries in chunks, in score batches, with per-query gathers (limit 0) or one
    shared gather per query block (limit 100); batch > 1 too."""
    monkeypatch.setattr(vec, "QUERY_CHUNK", 48)
    monkeypatch.setattr(vec, "SCORE_BYTES", 1)  # one query group per score batch
    monkeypatch.setattr(vec, "UNION_LIMIT", union_limit)
    q, k, v = _inputs(4, 400, 150, b=2, seed=7)
    ref = infllmv2_reference(q, k, v, SMALL)
    assert (vec.infllmv2_vectorized(q, k, v, SMALL) - ref).abs().max().item() < TOL


@pytest.mark.parametrize("g", [1, 16])
def test_published_ratios(g: int) -> None:
    q, k, v = _inputs(g, 1500, 1, seed=3)
    ref = infllmv2_reference(q, k, v, PUBLISHED_RATIO)
    assert (infllmv2_attention(q, k, v, PUBLISHED_RATIO, impl="vectorized") - ref).abs().max().item() < TOL


def test_published_defaults_decode() -> None:
    """The shipped sparse_config (64 blocks of 64, window 2048, dense below 8192), one query at 9000 tokens."""
    sp = SparseConfig()
    q, k, v = _inputs(16, 9000, 1, d=16, hkv=1, seed=5)
    ref = infllmv2_reference(q, k, v, sp)
    out = infllmv2_attention(q, k, v, sp, impl="vectorized")
    assert (out - ref).abs().max().item() < TOL
    assert (out - dense_attention(q, k, v)).abs().max().item() > 1e-3


TRITON_CASES = [(g, s, t) for g in (1, 4, 8, 16) for s, t in ((400, 1), (300, 24))] + [(4, 150, 150)]


@pytest.mark.parametrize("g,s,t", TRITON_CASES)
def test_triton_matches_reference(g: int, s: int, t: int) -> None:
    q, k, v = _inputs(g, s, t, seed=g + s + t)
    ref = infllmv2_reference(q, k, v, SMALL)
    out = infllmv2_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), SMALL, impl="triton").cpu()
    assert (out - ref).abs().max().item() < TOL


def test_dense_below_dense_len_and_always_sparse() -> None:
    q, k, v = _inputs(4, 255, 5)
    assert (infllmv2_attention(q, k, v, SMALL, impl="vectorized") - dense_attention(q, k, v)).abs().max() < 1e-6
    always = SparseConfig(**{**SMALL.__dict__, "dense_len": -1})
    ref = infllmv2_reference(q, k, v, always)
    out = infllmv2_attention(q, k, v, always, impl="vectorized")
    assert (out - ref).abs().max().item() < TOL
    assert (out - dense_attention(q, k, v)).abs().max().item() > 1e-2


@pytest.mark.parametrize("impl", ["vectorized", "triton"])
def test_decode_with_incremental_state_equals_recompute(impl: str) -> None:
    """Prefill 260 tokens, then decode one at a time; each step equals a stateless full recompute."""
    q, k, v = _inputs(8, 400, 400, seed=11)
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    full = infllmv2_attention(q, k, v, SMALL, impl="vectorized")
    state = InfLLMv2State(SMALL)
    # (Triton prefill is covered above; prefilling with it here would only slow the interpreter down)
    pre = infllmv2_attention(q[:, :, :260], k[:, :, :260], v[:, :, :260], SMALL, state=state, impl="vectorized")
    assert (pre - full[:, :, :260]).abs().max().item() < TOL
    computed = []
    steps = range(260, 400) if impl == "vectorized" else range(260, 280)
    for i in steps:
        out = infllmv2_attention(q[:, :, i : i + 1], k[:, :, : i + 1], v[:, :, : i + 1], SMALL, state=state, impl=impl)
        assert (out - full[:, :, i : i + 1]).abs().max().item() < TOL
        computed.append(state.kernels_computed)
    # one new kernel every kernel_stride tokens, never a recompression of the prefix
    n_end = steps[-1] + 1
    assert state.kernels_computed == vec.num_kernels(n_end, SMALL.kernel_size, SMALL.kernel_stride)
    assert torch.allclose(state.ck.cpu(), vec.compress_keys(k[:, :, :n_end], 16, 8).cpu(), atol=1e-6)
    increments = [b - a for a, b in zip(computed, computed[1:])]
    assert set(increments) == {0, 1}


def test_state_truncate_rolls_back() -> None:
    q, k, v = _inputs(4, 330, 330, seed=2)
    state = InfLLMv2State(SMALL)
    infllmv2_attention(q[:, :, :300], k[:, :, :300], v[:, :, :300], SMALL, state=state)
    state.truncate(270)
    assert state.ck.shape[2] == vec.num_kernels(270, 16, 8)
    out = infllmv2_attention(q[:, :, 270:330], k[:, :, :330], v[:, :, :330], SMALL, state=state)
    ref = infllmv2_reference(q[:, :, 270:330], k, v, SMALL)
    assert (out - ref).abs().max().item() < TOL


@pytest.mark.parametrize("seed", range(6))
def test_planted_needle_is_selected(seed: int) -> None:
    """Plant a key block aligned with the query: it is chosen, and the output equals dense attention over
    exactly the chosen blocks (a masked dense computation, independent of the sparse stage 2)."""
    g, s, d = 8, 640, 32
    q, k, v = _inputs(g, s, 1, d=d, seed=100 + seed)
    k = 0.3 * k
    nb = s // SMALL.block_size
    gen = torch.Generator().manual_seed(seed)
    needle = int(torch.randint(2, nb - 3, (1,), generator=gen))  # neither init nor local
    direction = q[0, :g, 0].mean(0)
    k[0, 0, needle * 32 : (needle + 1) * 32] = 3.0 * direction / direction.norm()
    kernels = _kernels(k[0, 0], SMALL.kernel_size, SMALL.kernel_stride)
    blocks = selected_blocks(q[0, :g, 0], kernels, s - 1, SMALL)
    assert needle in blocks
    sv, vi = vec.select_blocks(vec.block_scores(q, vec.compress_keys_padded(k, SMALL), s, SMALL), SMALL)
    assert needle in set(sv[0, 0, 0][vi[0, 0, 0]].tolist())
    out = infllmv2_attention(q, k, v, SMALL, impl="vectorized")
    keys = torch.cat([torch.arange(j * 32, (j + 1) * 32) for j in blocks])
    att = torch.softmax(q[0, :g, 0] @ k[0, 0, keys].T / math.sqrt(d), dim=-1)
    assert (out[0, :g, 0] - att @ v[0, 0, keys]).abs().max().item() < TOL


def test_short_context_degenerates_to_dense() -> None:
    """When every causal block fits in the budget, sparse attention is dense attention."""
    q, k, v = _inputs(4, 7 * 32, 7 * 32, seed=9)
    sp = SparseConfig(**{**SMALL.__dict__, "dense_len": -1})
    assert (infllmv2_attention(q, k, v, sp, impl="vectorized") - dense_attention(q, k, v)).abs().max() < 1e-5


def test_custom_op_and_export_single_node() -> None:
    q, k, v = _inputs(4, 300, 1, seed=4)
    args = (
        SMALL.kernel_size,
        SMALL.kernel_stride,
        SMALL.init_blocks,
        SMALL.block_size,
        SMALL.window_size,
        SMALL.topk,
        SMALL.dense_len,
    )
    out = torch.ops.edgecpm.infllmv2_attention(q, k, v, *args)
    assert (out - infllmv2_reference(q, k, v, SMALL)).abs().max().item() < TOL

    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.ops.edgecpm.infllmv2_attention(q, k, v, *args)

    s_dim = torch.export.Dim("S", min=128, max=65536)
    ep = torch.export.export(M(), (q, k, v), dynamic_shapes={"q": None, "k": {2: s_dim}, "v": {2: s_dim}})
    calls = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert calls == [torch.ops.edgecpm.infllmv2_attention.default]


def test_decomposition_exports_with_dynamic_length() -> None:
    """The op body (vectorized code) traces with torch.export for dynamic S and T and stays correct."""
    from edgecpm.runtime_kernels import infllmv2_decomposition

    sp = SparseConfig(**{**SMALL.__dict__, "dense_len": -1})
    args = (sp.kernel_size, sp.kernel_stride, sp.init_blocks, sp.block_size, sp.window_size, sp.topk, -1)

    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return infllmv2_decomposition(q, k, v, *args)

    q, k, v = _inputs(4, 300, 3, seed=6)
    s_dim, t_dim = torch.export.Dim("S", min=128, max=65536), torch.export.Dim("T", min=2, max=64)
    ep = torch.export.export(M(), (q, k, v), dynamic_shapes={"q": {2: t_dim}, "k": {2: s_dim}, "v": {2: s_dim}})
    for s, t in ((130, 2), (477, 9)):
        q2, k2, v2 = _inputs(4, s, t, seed=s)
        assert (ep.module()(q2, k2, v2) - infllmv2_reference(q2, k2, v2, sp)).abs().max().item() < TOL


def test_registry_choice_and_override(monkeypatch) -> None:
    monkeypatch.delenv("EDGECPM_KERNELS", raising=False)
    # without the compiled CPU kernel (tests/test_kernels_infllmv2_compiled.py covers it) the default is vectorized
    monkeypatch.setattr("edgecpm.runtime_kernels.infllmv2_compiled.available", lambda: False)
    assert resolve("infllmv2", torch.device("cpu")) == "vectorized"
    monkeypatch.setenv("EDGECPM_KERNELS", "reference")
    assert resolve("infllmv2", torch.device("cpu")) == "reference"
    monkeypatch.setenv("EDGECPM_KERNELS", "lightning=reference,infllmv2=vectorized")
    assert resolve("infllmv2", torch.device("cpu")) == "vectorized"
    assert resolve("lightning", torch.device("cpu")) == "reference"
    assert resolve("infllmv2", torch.device("cpu"), "reference") == "reference"  # argument wins
    monkeypatch.setenv("EDGECPM_KERNELS", "fastest")
    with pytest.raises(EdgecpmError, match="fastest"):
        resolve("infllmv2", torch.device("cpu"))
    monkeypatch.setenv("EDGECPM_KERNELS", "reference")
    q, k, v = _inputs(2, 300, 1)
    calls = []
    monkeypatch.setattr(
        "edgecpm.runtime_kernels.infllmv2_reference.infllmv2_reference",
        lambda *a, **kw: calls.append(1) or torch.zeros_like(q),
    )
    infllmv2_attention(q, k, v, SMALL)
    assert calls == [1]


def test_registry_default_on_cuda_is_vectorized_and_triton_is_opt_in(monkeypatch) -> None:
    """Triton has only run under TRITON_INTERPRET=1, so CUDA must not default to it (docs/kernels.md)."""
    monkeypatch.setattr("edgecpm.runtime_kernels.registry.triton_available", lambda: True)
    monkeypatch.delenv("EDGECPM_KERNELS", raising=False)
    cuda = torch.device("cuda")
    for kernel in ("infllmv2", "lightning", "ternary"):
        assert resolve(kernel, cuda) == "vectorized"
    monkeypatch.setenv("EDGECPM_KERNELS", "triton")
    assert resolve("infllmv2", cuda) == "triton"
    monkeypatch.setenv("EDGECPM_KERNELS", "ternary=triton")
    assert resolve("ternary", cuda) == "triton" and resolve("infllmv2", cuda) == "vectorized"


def test_bad_shapes_raise() -> None:
    q, k, v = _inputs(4, 100, 1)
    with pytest.raises(EdgecpmError, match="expects"):
        infllmv2_attention(q[0], k, v, SMALL)
    with pytest.raises(EdgecpmError, match="does not fit"):
        infllmv2_attention(q[:, :7], k, v, SMALL)


@pytest.mark.parametrize("splits", [1, 3])
def test_triton_split_slots_merge(splits: int) -> None:
    """Flash-decoding: the chosen blocks split over several programs, partial softmax states merged."""
    from edgecpm.runtime_kernels.infllmv2_triton import sparse_blocks_triton

    q, k, v = _inputs(8, 400, 3, seed=21)
    idx, valid = vec.select_blocks(vec.block_scores(q, vec.compress_keys_padded(k, SMALL), 400, SMALL), SMALL)
    dev = [x.to(DEVICE) for x in (q, k, v, idx, valid)]
    out = sparse_blocks_triton(*dev, SMALL.block_size, 1 / math.sqrt(32), splits=splits).cpu()
    assert (out - infllmv2_reference(q, k, v, SMALL)).abs().max().item() < TOL
