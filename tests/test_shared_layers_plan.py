"""The planner plans a shared-layer model at N ODE steps (fewer logical layers: less KV memory, faster)."""

from __future__ import annotations

import pytest

import edgecpm
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

FULL = SyntheticSpec(num_layers=8, shared_unique_layers=1, seed=11)


def test_planner_predicts_fewer_steps_faster() -> None:
    from edgecpm.planning.planner import plan

    ckpt = cached_checkpoint(FULL)
    full = plan(str(ckpt), "raspberry-pi-5", context=256, backend="llama.cpp")
    half = plan(str(ckpt), "raspberry-pi-5", context=256, backend="llama.cpp", ode_steps=4)
    assert half.to_dict()["request"]["ode_steps"] == 4
    assert half.choice.prediction.kv_bytes == pytest.approx(full.choice.prediction.kv_bytes / 2)
    assert half.choice.prediction.decode_tokens_per_s > full.choice.prediction.decode_tokens_per_s
    with pytest.raises(edgecpm.EdgecpmError, match="ode_steps"):
        plan(str(ckpt), "raspberry-pi-5", ode_steps=0)
