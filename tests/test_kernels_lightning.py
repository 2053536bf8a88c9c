"""Lightning attention: chunked prefill == step-by-step decode; vectorized and Triton against the reference."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from edgecpm.errors import EdgecpmError  # noqa: E402
from edgecpm.runtime_kernels.lightning import (  # noqa: E402
    LightningState,
    alibi_slopes,
    lightning_attention,
    lightning_reference,
    sala_log_decay,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(t: int, h: int = 4, dk: int = 32, dv: int = 32, b: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    # unit-scale rows, as after SALA's q/k RMSNorm
    q = torch.nn.functional.normalize(torch.randn(b, h, t, dk, generator=gen), dim=-1) * dk**0.5 * 0.3
    k = torch.nn.functional.normalize(torch.randn(b, h, t, dk, generator=gen), dim=-1) * dk**0.5 * 0.3
    v = torch.randn(b, h, t, dv, generator=gen)
    return q, k, v


def test_sala_slopes() -> None:
    """32 heads: slope_h = 2^(-0.25 (h + 1)), from 0.8409 down to 2^-8 (SALA modeling code)."""
    slopes = alibi_slopes(32)
    assert slopes[0] == pytest.approx(0.8408964, rel=1e-6) and slopes[-1] == pytest.approx(0.00390625)
    assert len(alibi_slopes(12)) == 12 and len(set(alibi_slopes(12))) == 12
    assert torch.equal(sala_log_decay(4), -torch.tensor([2**-2, 2**-4, 2**-6, 2**-8]))


@pytest.mark.parametrize("impl", ["vectorized", "triton"])
@pytest.mark.parametrize("t", [1, 63, 64, 200])
def test_matches_reference(impl: str, t: int) -> None:
    q, k, v = _inputs(t, seed=t)
    g = sala_log_decay(4)
    state0 = torch.randn(2, 4, 32, 32) * 0.1
    ref, ref_state = lightning_reference(q, k, v, g, 0.2, state0)
    dev = [x.to(DEVICE) for x in (q, k, v)]
    out, state = lightning_attention(*dev, g.to(DEVICE), scale=0.2, state=state0.to(DEVICE), impl=impl)
    assert (out.cpu() - ref).abs().max().item() < TOL
    assert (state.cpu() - ref_state).abs().max().item() < TOL


@pytest.mark.parametrize("impl", ["vectorized", "triton"])
def test_chunked_prefill_equals_step_by_step_decode(impl: str) -> None:
    """Prefill 150 tokens in chunks, then decode 1 token at a time: equals one prefill of all tokens."""
    q, k, v = _inputs(180, dk=16, dv=24, seed=5)
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    g = sala_log_decay(4).to(DEVICE)
    full, full_state = lightning_attention(q, k, v, g, impl=impl)
    out, state = lightning_attention(q[:, :, :150], k[:, :, :150], v[:, :, :150], g, impl=impl)
    steps = [out]
    for i in range(150, 180):
        o, state = lightning_attention(
            q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1], g, state=state, impl=impl
        )
        steps.append(o)
    assert (torch.cat(steps, 2) - full).abs().max().item() < TOL
    assert (state - full_state).abs().max().item() < TOL


def test_state_truncate_replays_latest_call() -> None:
    q, k, v = _inputs(40, seed=8)
    g = sala_log_decay(4)
    st = LightningState(rollback_tokens=8)
    st.run(q[:, :, :30], k[:, :, :30], v[:, :, :30], g, 0.2)
    st.run(q[:, :, 30:36], k[:, :, 30:36], v[:, :, 30:36], g, 0.2)  # a speculative draft of 6 tokens
    st.truncate(33)
    _, expected = lightning_reference(q[:, :, :33], k[:, :, :33], v[:, :, :33], g, 0.2)
    assert (st.state - expected).abs().max().item() < TOL
    st.truncate(30)
    _, expected = lightning_reference(q[:, :, :30], k[:, :, :30], v[:, :, :30], g, 0.2)
    assert (st.state - expected).abs().max().item() < TOL
    with pytest.raises(EdgecpmError, match="roll"):
        st.truncate(10)  # the 30-token call was split at 22 (its last 8 tokens kept): 10 is gone


@pytest.mark.parametrize("first_call", [1, 5, 40])
def test_state_rolls_back_across_calls(first_call: int) -> None:
    """Draft-style use: one call per token after a first call; every position of the latest `rollback_tokens`
    can be restored (then decoding continues exactly), however many calls that spans."""
    w, n = 6, 60
    q, k, v = _inputs(n + 10, seed=12)
    g = sala_log_decay(4)
    st = LightningState(rollback_tokens=w)
    outs = [st.run(q[:, :, :first_call], k[:, :, :first_call], v[:, :, :first_call], g, 0.2)]
    for i in range(first_call, n):
        outs.append(st.run(q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1], g, 0.2))
    full, _ = lightning_reference(q, k, v, g, 0.2)
    assert (torch.cat(outs, 2) - full[:, :, :n]).abs().max().item() < TOL
    for back in range(1, w + 1):  # n - back, from the latest call back over `w` calls
        st2 = LightningState(rollback_tokens=w)
        st2.run(q[:, :, :first_call], k[:, :, :first_call], v[:, :, :first_call], g, 0.2)
        for i in range(first_call, n):
            st2.run(q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1], g, 0.2)
        st2.truncate(n - back)
        _, expected = lightning_reference(q[:, :, : n - back], k[:, :, : n - back], v[:, :, : n - back], g, 0.2)
        assert (st2.state - expected).abs().max().item() < TOL, back
        resumed = st2.run(q[:, :, n - back : n + 5], k[:, :, n - back : n + 5], v[:, :, n - back : n + 5], g, 0.2)
        assert (resumed - full[:, :, n - back : n + 5]).abs().max().item() < TOL, back
    kept = st.length - st._base_len
    assert w <= kept <= 2 * w  # the memory bound: one base state and at most 2 w tokens of keys/values
    with pytest.raises(EdgecpmError, match="roll"):
        st.truncate(st._base_len - 1)


def test_long_call_is_split_where_the_base_falls() -> None:
    q, k, v = _inputs(100, seed=13)
    g = sala_log_decay(4)
    st = LightningState(rollback_tokens=16)
    out = st.run(q, k, v, g, 0.2)
    full, _ = lightning_reference(q, k, v, g, 0.2)
    assert (out - full).abs().max().item() < TOL
    assert st._base_len == 84 and st._kept[0].shape[2] == 16 and st._kept[0].is_contiguous()
    st.truncate(90)
    _, expected = lightning_reference(q[:, :, :90], k[:, :, :90], v[:, :, :90], g, 0.2)
    assert (st.state - expected).abs().max().item() < TOL


def test_bad_decay_shape() -> None:
    q, k, v = _inputs(3)
    with pytest.raises(EdgecpmError, match="log_decay"):
        lightning_attention(q, k, v, torch.zeros(3))


def test_custom_op_matches_and_exports() -> None:
    q, k, v = _inputs(70, seed=3)
    g = sala_log_decay(4)
    s0 = torch.zeros(2, 4, 32, 32)
    out, state = torch.ops.edgecpm.lightning_attention(q, k, v, g, s0, 0.2)
    ref, ref_state = lightning_reference(q, k, v, g, 0.2)
    assert (out - ref).abs().max().item() < TOL and (state - ref_state).abs().max().item() < TOL

    class M(torch.nn.Module):
        def forward(self, q, k, v, g, s):
            return torch.ops.edgecpm.lightning_attention(q, k, v, g, s, 0.2)

    ep = torch.export.export(M(), (q, k, v, g, s0))
    calls = [n.target for n in ep.graph.nodes if n.op == "call_function" and "edgecpm" in str(n.target)]
    assert calls == [torch.ops.edgecpm.lightning_attention.default]
