"""Sampling, stopping and streaming through the public API."""

from __future__ import annotations

import numpy as np
import pytest

import edgecpm
from edgecpm.errors import EdgecpmError
from edgecpm.generation import SamplingParams, sample


def test_greedy_equals_argmax_of_reference_logits(tiny_tied) -> None:
    m = edgecpm.load(tiny_tied)
    prompt = m.tokenizer.encode("The game")
    r = m.generate_result("The game", max_new_tokens=6)
    ids = list(prompt)
    for tok in r.token_ids:
        assert int(np.argmax(m.logits(ids)[-1])) == tok
        ids.append(tok)


def test_seed_reproduces_and_changes(tiny_tied) -> None:
    m = edgecpm.load(tiny_tied)
    kw = dict(max_new_tokens=12, temperature=5.0, top_p=0.95, top_k=100)
    a = m.generate_result("Hello", seed=1, **kw).token_ids
    assert a == m.generate_result("Hello", seed=1, **kw).token_ids
    assert any(m.generate_result("Hello", seed=s, **kw).token_ids != a for s in range(2, 6))


def test_top_k_and_top_p_restrict_support() -> None:
    logits = np.array([5.0, 4.0, 1.0, 0.0, -1.0])
    rng = np.random.default_rng(0)
    draws = {sample(logits, SamplingParams(temperature=1.0, top_k=2), rng) for _ in range(200)}
    assert draws == {0, 1}
    draws = {sample(logits, SamplingParams(temperature=1.0, top_p=0.5), rng) for _ in range(200)}
    assert draws == {0}


def test_stop_string_and_stream_agree(tiny_tied) -> None:
    m = edgecpm.load(tiny_tied)
    full = m.generate("The", max_new_tokens=20)
    assert full
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    if not stop.strip():
        pytest.skip("degenerate generation")
    stopped = m.generate("The", max_new_tokens=20, stop=[stop])
    assert stop not in stopped and full.startswith(stopped)
    assert "".join(m.generate("The", max_new_tokens=20, stream=True)) == full


def test_bad_sampling_arguments(tiny_tied) -> None:
    m = edgecpm.load(tiny_tied)
    for kwargs in ({"temperature": -1}, {"top_p": 0}, {"top_k": -3}, {"max_new_tokens": -1}):
        with pytest.raises(EdgecpmError):
            m.generate("x", **kwargs)
    with pytest.raises(EdgecpmError, match="outside the vocabulary"):
        m.logits([1, 10**6])
