"""Speculative source (e) of issue 15: a shared-layer model's own weights integrated in fewer ODE steps as its
draft (`draft="ode:N"`). Checked against plain greedy decoding (lossless) and against the same model loaded
independently with `ode_steps=N` (the draft really is the N-step model, and it shares the target's weights)."""

from __future__ import annotations

import numpy as np
import pytest

import edgecpm
from edgecpm.errors import EdgecpmError
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

FULL = SyntheticSpec(num_layers=8, shared_unique_layers=1, seed=11)
PROMPT = "The tower is"


@pytest.fixture(scope="module")
def target():
    return edgecpm.load(cached_checkpoint(FULL), backend="torch")


@pytest.mark.parametrize("steps", [2, 4])
def test_ode_draft_is_lossless_and_is_the_n_step_model(target, steps: int) -> None:
    from edgecpm.speculative.sources import resolve_draft

    plain = target.generate_result(PROMPT, max_new_tokens=24, temperature=0.0)
    spec = target.generate_result(PROMPT, max_new_tokens=24, temperature=0.0, draft=f"ode:{steps}", draft_tokens=3)
    assert spec.token_ids == plain.token_ids
    stats = spec.extra["speculative"].to_dict()
    assert stats["drafted"] > 0 and stats["rounds"] > 0
    draft = resolve_draft(f"ode:{steps}", target)
    ids = target.tokenizer.encode(PROMPT + " and more words here")
    independent = edgecpm.load(cached_checkpoint(FULL), backend="torch", ode_steps=steps)
    want = independent.backend.prefill(ids, all_logits=True)
    got = draft.backend.prefill(ids, all_logits=True)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(got - target.backend.prefill(ids, all_logits=True)).max() > 1e-3  # not the 8-step model
    a, b = draft.backend.model, target.backend.model
    assert a.layers is b.layers and a.embed_tokens.weight.data_ptr() == b.embed_tokens.weight.data_ptr()
    assert a.norm is not b.norm and a.norm.weight is b.norm.weight


def test_bad_ode_drafts_are_one_line_errors(target, tmp_path) -> None:
    for spec, words in (("ode:x", "expected ode:N"), ("ode:8", "fewer steps"), ("ode:0", "expected ode:N")):
        with pytest.raises(EdgecpmError, match=words):
            target.generate(PROMPT, max_new_tokens=2, draft=spec)
    unshared = edgecpm.load(cached_checkpoint(SyntheticSpec(num_layers=4, seed=3)), backend="torch")
    with pytest.raises(EdgecpmError, match="shared-layer model"):
        unshared.generate(PROMPT, max_new_tokens=2, draft="ode:2")
    gguf = edgecpm.export(cached_checkpoint(FULL), format="gguf", out=tmp_path / "g", quant="f32", progress=False)
    on_llama = edgecpm.load(gguf.path, backend="llama.cpp")
    with pytest.raises(EdgecpmError, match="load the target with backend='torch'"):
        on_llama.generate(PROMPT, max_new_tokens=2, draft="ode:4")
