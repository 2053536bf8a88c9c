"""The compiled InfLLM v2 CPU kernel against the loop reference (`infllmv2_reference`, written from the math).

The kernel is built once per machine into the kernel cache (tens of seconds the first time, then a load);
the module fixture builds it once per session. Decode (T = 1), chunked prefill (T > 1, several query tiles),
GQA groups 1..16, the 8B head layout (32 query heads, 2 KV heads, dim 128), the published sparse_config,
the decode state over several steps, cache slices and pre-RoPE scoring inputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from edgecpm.config import SparseConfig
from edgecpm.errors import EdgecpmError
from edgecpm.runtime_kernels import InfLLMv2State, dense_attention, infllmv2_attention
from edgecpm.runtime_kernels import infllmv2_compiled as comp
from edgecpm.runtime_kernels.infllmv2_reference import infllmv2_reference
from edgecpm.runtime_kernels.registry import resolve

TOL = 1e-4
SMALL = SparseConfig(
    kernel_size=16, kernel_stride=8, init_blocks=1, block_size=32, window_size=32, topk=6, dense_len=256
)
PUBLISHED_RATIO = SparseConfig(
    kernel_size=32, kernel_stride=16, init_blocks=1, block_size=64, window_size=128, topk=8, dense_len=1024
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def built():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine: the compiled kernel cannot be built")
    comp.load()  # a build failure with a compiler present is a real failure


def _inputs(g: int, s: int, t: int, d: int = 32, hkv: int = 2, seed: int = 0, b: int = 1):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hkv * g, t, d, generator=gen)
    k = torch.randn(b, hkv, s, d, generator=gen)
    v = torch.randn(b, hkv, s, d, generator=gen)
    return q, k, v


CASES = [(g, s, t) for g in (1, 4, 16) for s, t in ((200, 200), (600, 1), (600, 70))] + [(8, 457, 457)]


@pytest.mark.parametrize("g,s,t", CASES)
def test_matches_reference(g: int, s: int, t: int) -> None:
    q, k, v = _inputs(g, s, t, seed=g * 1000 + s + t)
    sp = replace(SMALL, dense_len=-1)  # always sparse, also at 200 keys
    ref = infllmv2_reference(q, k, v, sp)
    out = comp.infllmv2_compiled(q, k, v, sp)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert (out - ref).abs().max().item() < TOL
    if s >= 400:  # the budget really drops blocks here
        assert (out - dense_attention(q, k, v)).abs().max().item() > 1e-2


def test_8b_head_layout_decode_and_prefill_chunk() -> None:
    """32 query heads, 2 KV heads, dim 128; published block/stride ratios; decode and a 40-query chunk."""
    q, k, v = _inputs(16, 1600, 40, d=128, seed=11)
    ref = infllmv2_reference(q, k, v, PUBLISHED_RATIO)
    out = infllmv2_attention(q, k, v, PUBLISHED_RATIO, impl="compiled")
    assert (out - ref).abs().max().item() < TOL
    q1 = q[:, :, -1:]
    ref1 = infllmv2_reference(q1, k, v, PUBLISHED_RATIO)
    assert (infllmv2_attention(q1, k, v, PUBLISHED_RATIO, impl="compiled") - ref1).abs().max().item() < TOL


def test_published_sparse_config_8b_layout_decode() -> None:
    """The published sparse_config itself (96-block budget) past its 6144-token coverage."""
    sp = replace(SparseConfig(), dense_len=-1)
    q, k, v = _inputs(16, 7000, 1, d=128, seed=5)
    ref = infllmv2_reference(q, k, v, sp)
    out = comp.infllmv2_compiled(q, k, v, sp)
    assert (out - ref).abs().max().item() < TOL
    assert (out - dense_attention(q, k, v)).abs().max().item() > 1e-3


def test_decode_steps_with_state_and_cache_slices() -> None:
    """Token-by-token decode through the incremental compressed-key state, k/v read as slices of a larger
    preallocated cache (non-contiguous), batch 2."""
    g, s0, steps = 4, 500, 20
    q, k, v = _inputs(g, s0 + steps, steps, b=2, seed=3)
    cache_k = torch.zeros(2, 2, 1024, 32)
    cache_v = torch.zeros(2, 2, 1024, 32)
    cache_k[:, :, : s0 + steps] = k
    cache_v[:, :, : s0 + steps] = v
    state = InfLLMv2State(SMALL)
    state.update(k[:, :, :s0])
    for i in range(steps):
        s = s0 + i + 1
        ks, vs = cache_k[:, :, :s], cache_v[:, :, :s]
        qi = q[:, :, i : i + 1]
        out = infllmv2_attention(qi, ks, vs, SMALL, state=state, impl="compiled")
        ref = infllmv2_reference(qi, k[:, :, :s], v[:, :, :s], SMALL)
        assert (out - ref).abs().max().item() < TOL, i


def test_scoring_inputs_differ_from_attention_inputs() -> None:
    """use_nope: blocks are chosen with score_q / score_k, attention uses q, k, v."""
    q, k, v = _inputs(4, 700, 30, seed=9)
    sq, sk, _ = _inputs(4, 700, 30, seed=10)
    ref = infllmv2_reference(q, k, v, SMALL, score_q=sq, score_k=sk)
    out = infllmv2_attention(q, k, v, SMALL, impl="compiled", score_q=sq, score_k=sk)
    assert (out - ref).abs().max().item() < TOL


def test_threads_agree() -> None:
    q, k, v = _inputs(16, 900, 33, seed=2)
    one = comp.infllmv2_compiled(q, k, v, SMALL)
    torch.set_num_threads(2)
    two = comp.infllmv2_compiled(q, k, v, SMALL)
    assert torch.equal(one, two)  # work items are independent: same arithmetic on every thread count


def test_registry_prefers_compiled_on_cpu_and_env_overrides(monkeypatch) -> None:
    monkeypatch.delenv("EDGECPM_KERNELS", raising=False)
    assert resolve("infllmv2", torch.device("cpu")) == "compiled"
    monkeypatch.setenv("EDGECPM_KERNELS", "infllmv2=vectorized")
    assert resolve("infllmv2", torch.device("cpu")) == "vectorized"
    with pytest.raises(EdgecpmError, match="CPU"):
        resolve("infllmv2", torch.device("cuda"), "compiled")


def test_no_compiler_falls_back_with_one_line(monkeypatch, tmp_path) -> None:
    """A machine without a working compiler: one-line EdgecpmError from load(), one warning and the
    vectorized path from the registry."""
    monkeypatch.setattr(comp, "_state", {"loaded": False, "error": None, "warned": False})
    monkeypatch.setenv("EDGECPM_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(comp, "FLAGS", comp.FLAGS + ("-DEDGECPM_FRESH_BUILD",))  # a key not built before
    monkeypatch.setattr(comp, "_registered", lambda: False)  # as in a process that has not loaded the op
    with pytest.raises(EdgecpmError) as err:
        comp.load()
    assert "\n" not in str(err.value) and "could not be built" in str(err.value)
    monkeypatch.delenv("EDGECPM_KERNELS", raising=False)
    with pytest.warns(RuntimeWarning, match="vectorized"):
        assert resolve("infllmv2", torch.device("cpu")) == "vectorized"


@pytest.mark.parametrize("agree", [True, False])
def test_prefill_tiles_shared_union_and_per_query(agree: bool) -> None:
    """Queries of a tile that agree on their blocks share the union's gather; disagreeing ones walk their own."""
    q, k, v = _inputs(8, 900, 96, seed=21)
    if agree:  # nearly the same query at every position: neighbours choose (nearly) the same blocks
        q = q[:, :, :1].expand_as(q) + 0.01 * q
    ref = infllmv2_reference(q, k, v, SMALL)
    assert (comp.infllmv2_compiled(q, k, v, SMALL) - ref).abs().max().item() < TOL


def test_bf16_cache_is_read_as_bf16() -> None:
    """A bf16 KV cache (and bf16 queries): blocks are widened to fp32 inside the kernel; the reference does the
    same math in fp32 on the same bf16 values. Output in q's dtype."""
    q, k, v = _inputs(16, 1100, 9, d=64, seed=13)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    ref = infllmv2_reference(q.float(), k, v, SMALL)
    out = comp.infllmv2_compiled(q, k, v, SMALL)
    assert out.dtype == torch.bfloat16
    fp32 = comp.infllmv2_compiled(q.float(), k, v, SMALL)
    assert (fp32 - ref).abs().max().item() < TOL
    assert (out.float() - ref).abs().max().item() < 1e-2  # bf16 output rounding


@pytest.mark.slow
def test_stale_library_is_rebuilt(tmp_path) -> None:
    """An unloadable file where the built library should be (an interrupted first build) is rebuilt. A fresh
    process (this one has the op registered already) and a full compile, tens of seconds: slow."""
    script = (
        "from edgecpm.runtime_kernels import infllmv2_compiled as c\n"
        "out = c.build_dir(); out.mkdir(parents=True)\n"
        "(out / f\"edgecpm_infllmv2_cpu_{out.name.rsplit('-', 1)[1]}.so\").write_bytes(b'not a library')\n"
        "c.load(); assert c.loaded(); print('rebuilt')\n"
    )
    env = {**os.environ, "EDGECPM_KERNEL_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "rebuilt" in done.stdout, done.stderr[-2000:]
