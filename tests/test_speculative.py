"""Speculative decoding is lossless: greedy output equals plain greedy token for token (every draft source,
across backends), sampled output follows the target's distribution (chi-square against the exact distribution
enumerated from the target's own logits), and the verify rule alone reproduces p (Monte Carlo)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import edgecpm
from edgecpm.generation import Generator, SamplingParams, probabilities
from edgecpm.speculative import ModelDraft, PromptLookupDraft, Speculator
from edgecpm.speculative.generator import verify
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

# init_std 1.0: the tiny random models produce varied text (at 0.1 greedy repeats one token)
TARGET = SyntheticSpec(init_std=1.0, seed=5)
SMALLER = SyntheticSpec(init_std=1.0, seed=5, num_layers=1)  # same tokenizer, fewer layers (partly agrees)
PROMPT = (
    "The tower is 324 metres tall, about the same height as an 81-storey building. "
    "The tower is the tallest structure in Paris"
)


def chi2_sf(stat: float, df: int) -> float:
    """P(X >= stat) for chi-square with df degrees of freedom (regularized upper incomplete gamma)."""
    return float(
        torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64))
    )


@pytest.fixture(scope="module")
def target() -> edgecpm.LoadedModel:
    return edgecpm.load(cached_checkpoint(TARGET))


@pytest.fixture(scope="module")
def drafts(target) -> dict:
    return {
        "prompt-lookup": PromptLookupDraft(),
        "smaller model": ModelDraft(edgecpm.load(cached_checkpoint(SMALLER)).backend),
        "target in bfloat16": ModelDraft(edgecpm.load(cached_checkpoint(TARGET), dtype="bfloat16").backend),
    }


GREEDY = SamplingParams()


def run(model, draft=None, k=4, n=40, params=GREEDY, prompt=PROMPT):
    spec = None if draft is None else Speculator(draft, k)
    gen = Generator(model.backend, model.tokenizer, model.config.eos_token_ids, speculator=spec)
    return gen.run(model.encode_prompt(prompt), n, params)


@pytest.mark.parametrize("source", ["prompt-lookup", "smaller model", "target in bfloat16"])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_equals_plain_greedy(target, drafts, source, k) -> None:
    plain = run(target)
    spec = run(target, drafts[source], k)
    assert spec.token_ids == plain.token_ids and spec.text == plain.text
    s = spec.extra["speculative"]
    assert s.rounds < len(plain.token_ids) or s.accepted == 0
    assert s.tokens == len(spec.token_ids)


def test_drafts_are_both_accepted_and_rejected(target, drafts) -> None:
    """The bf16 twin mostly agrees, the smaller model often does not: both paths of the verifier are taken."""
    twin = run(target, drafts["target in bfloat16"], 4).extra["speculative"]
    small = run(target, drafts["smaller model"], 4).extra["speculative"]
    assert twin.accepted > twin.drafted * 0.5 and twin.acceptance_length > 2
    assert small.accepted < small.drafted


def test_max_new_tokens_stop_and_stream(target, drafts) -> None:
    for n in (0, 1, 2, 7):
        assert run(target, drafts["target in bfloat16"], 5, n=n).token_ids == run(target, n=n).token_ids
    plain = run(target)
    stop = plain.text[len(plain.text) // 2 :][:3]
    gen = Generator(target.backend, target.tokenizer, speculator=Speculator(drafts["target in bfloat16"], 4))
    ids = target.encode_prompt(PROMPT)
    pieces = list(gen.stream(ids, 40, SamplingParams(), stop=[stop]))
    want = list(Generator(target.backend, target.tokenizer).stream(ids, 40, SamplingParams(), stop=[stop]))
    assert pieces == want and len("".join(want)) < len(plain.text)


def test_verify_rule_reproduces_the_target_distribution() -> None:
    """Draft from q, verify against p: the first emitted token is distributed as p (20k Monte Carlo draws)."""
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=1.0)
    p_logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    q = np.array([0.1, 0.1, 0.2, 0.5, 0.1])  # a poor draft: most of its mass where p has little
    rows = np.stack([p_logits, p_logits])
    p = probabilities(p_logits, params)
    n = 20000
    counts = np.zeros(5)
    for _ in range(n):
        d = int(rng.choice(5, p=q))
        accepted, nxt = verify(rows, [(d, q)], params, rng)
        counts[d if accepted else nxt] += 1
    stat = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2_sf(stat, 4) > 1e-3, (counts / n, p)
    # a deterministic proposal (prompt lookup): q is a point mass
    counts[:] = 0
    for _ in range(n):
        accepted, nxt = verify(rows, [(3, None)], params, rng)
        counts[3 if accepted else nxt] += 1
    stat = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2_sf(stat, 4) > 1e-3, (counts / n, p)


def exact_continuations(b, ids: list[int], params: SamplingParams) -> dict[tuple[int, ...], float]:
    """Every 3-token continuation's exact probability, from the target's own logits (one prefill per prefix)."""
    exact: dict[tuple[int, ...], float] = {}
    first = probabilities(b.prefill(ids), params)
    for t1 in np.flatnonzero(first):
        p2 = probabilities(b.prefill(ids + [int(t1)]), params)
        for t2 in np.flatnonzero(p2):
            p3 = probabilities(b.prefill(ids + [int(t1), int(t2)]), params)
            for t3 in np.flatnonzero(p3):
                exact[(int(t1), int(t2), int(t3))] = first[t1] * p2[t2] * p3[t3]
    return exact


@pytest.mark.parametrize(
    "source",
    [
        "smaller model",
        pytest.param("target in bfloat16", marks=pytest.mark.slow),
        pytest.param(None, marks=pytest.mark.slow),  # plain sampling: the test's own calibration
    ],
)
def test_sampled_continuations_follow_the_target_distribution(target, drafts, source) -> None:
    """3-token continuations at top_k=2: 8 outcomes whose exact probabilities come from the target's logits.
    Plain and speculative sampling over many seeds both fit them (a broken verifier fails by a wide margin)."""
    params = SamplingParams(temperature=1.5, top_k=2)
    ids = target.encode_prompt(PROMPT)
    b = target.backend
    exact = exact_continuations(b, ids, params)
    assert len(exact) == 8
    runs = 100 if source == "smaller model" else 400
    for draft in [None if source is None else drafts[source]]:
        counts = dict.fromkeys(exact, 0)
        for seed in range(runs):
            r = run(target, draft, k=2, n=3, params=SamplingParams(temperature=1.5, top_k=2, seed=seed))
            counts[tuple(r.token_ids)] += 1
        observed = np.array(list(counts.values()), dtype=float)
        expected = np.array(list(exact.values())) * runs
        stat = float(((observed - expected) ** 2 / expected).sum())
        assert chi2_sf(stat, len(exact) - 1) > 1e-3, (draft and draft.name, observed, expected)


def test_prompt_lookup_proposes_what_followed_the_last_ngram() -> None:
    d = PromptLookupDraft(max_ngram=3)
    rng, params = np.random.default_rng(0), SamplingParams()
    ctx = [5, 6, 7, 8, 9, 1, 2, 6, 7]
    assert [t for t, _ in d.propose(ctx, 3, params, rng)] == [8, 9, 1]  # bigram (6, 7) seen at 1..2
    assert [t for t, _ in d.propose([1, 2, 3, 4], 3, params, rng)] == []
    assert [t for t, _ in d.propose([4, 5, 4, 5, 4], 2, params, rng)] == [5, 4]  # the latest trigram hit


def test_bad_draft_tokens_is_one_clear_error() -> None:
    with pytest.raises(edgecpm.EdgecpmError, match="draft_tokens"):
        Speculator(PromptLookupDraft(), 0)


def test_all_combinations_of_source_and_k_are_cheap(target, drafts) -> None:
    """A short smoke over the grid (the lossless tests above cover the values)."""
    for (name, draft), k in itertools.product(drafts.items(), (2, 8)):
        assert run(target, draft, k, n=12).token_ids == run(target, n=12).token_ids, (name, k)


def test_api_draft_argument_and_errors(target) -> None:
    small = edgecpm.load(cached_checkpoint(SMALLER))
    plain = target.generate_result(PROMPT, max_new_tokens=16)
    for draft in ("prompt-lookup", small, cached_checkpoint(SMALLER)):
        r = target.generate_result(PROMPT, max_new_tokens=16, draft=draft, draft_tokens=3)
        assert r.token_ids == plain.token_ids and r.extra["speculative"].k == 3
    assert target.generate(PROMPT, max_new_tokens=16, draft="none") == plain.text
    assert "".join(target.generate(PROMPT, max_new_tokens=16, stream=True, draft=small)) == plain.text
    with pytest.raises(edgecpm.EdgecpmError, match="neither a draft name"):
        target.generate(PROMPT, draft="/no/such/draft")
    with pytest.raises(edgecpm.EdgecpmError, match="own decoding state"):
        target.generate(PROMPT, draft=target)
    other = edgecpm.load(cached_checkpoint(SyntheticSpec(tokenizer_pieces=500)))
    with pytest.raises(edgecpm.EdgecpmError, match="share the target's tokenizer"):
        target.generate(PROMPT, draft=other)


def test_cli_generate_json_reports_speculative_stats() -> None:
    import json
    import subprocess
    import sys

    ckpt = str(cached_checkpoint(TARGET))
    args = [sys.executable, "-m", "edgecpm", "generate", ckpt, "--prompt", PROMPT, "--max-new-tokens", "12", "--json"]
    plain = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    spec_args = args + ["--draft", str(cached_checkpoint(SMALLER)), "--draft-tokens", "3"]
    spec = json.loads(subprocess.run(spec_args, capture_output=True, text=True, check=True).stdout)
    assert spec["token_ids"] == plain["token_ids"]
    s = spec["speculative"]
    assert s["draft_tokens"] == 3 and s["rounds"] >= 1 and s["acceptance_length"] >= 1
    bad = subprocess.run(args + ["--draft", "prompt-lookup", "--draft-tokens", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("edgecpm: error: draft_tokens")
