"""EAGLE draft head and FR-Spec: greedy speculative output equals plain greedy decoding token for token (plain
decoding never touches the head), sampled output fits the exact target distribution (chi-square), FR-Spec
drafts only the table's tokens while the target still verifies the full vocabulary, the frequency table's
counts equal a plain count of the tokenized corpus, and the example script trains a head that drafts."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import edgecpm
from edgecpm.generation import Generator, SamplingParams
from edgecpm.speculative import EagleDraft, Speculator
from edgecpm.speculative.eagle import EagleHead
from edgecpm.speculative.eagle_data import continuations
from edgecpm.speculative.eagle_train import depth_agreement, extract, train, unrolled
from edgecpm.speculative.frspec import build_table, count_tokens, read_ids, write_table
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

TARGET = SyntheticSpec(init_std=1.0, seed=5)
PROMPT = (
    "The tower is 324 metres tall, about the same height as an 81-storey building. "
    "The tower is the tallest structure in Paris"
)
GREEDY = SamplingParams()
TRAINED_TOKENS = 20  # the head learns the first 20 tokens of the greedy continuation, not the rest


@pytest.fixture(scope="module")
def target() -> edgecpm.LoadedModel:
    return edgecpm.load(cached_checkpoint(TARGET))


def run(model, draft=None, k=4, n=40, params=GREEDY, prompt=PROMPT):
    spec = None if draft is None else Speculator(draft, k)
    gen = Generator(model.backend, model.tokenizer, model.config.eos_token_ids, speculator=spec)
    return gen.run(model.encode_prompt(prompt), n, params)


def generated_text(model) -> list[int]:
    """The tiny model's own greedy text: the prompt and its first continuation tokens."""
    ids = model.encode_prompt(PROMPT)
    return ids + run(model, n=TRAINED_TOKENS).token_ids


@pytest.fixture(scope="module")
def head(target) -> EagleHead:
    torch.manual_seed(0)
    feats = extract(target.backend.model, generated_text(target), seq=256)
    feats.tokens *= 2  # one chunk for training, the same again as the "held-out" one
    feats.states *= 2
    feats.labels *= 2
    h = EagleHead.for_model(target.backend.model)
    train(h, feats, steps=150, lr=3e-3, ce_weight=1.0, noise=0.0)
    return h


@pytest.fixture(scope="module")
def rows(target) -> np.ndarray:
    """An FR-Spec row set: the tokens of the generated text plus the lowest ids up to 128 (vocab is 608)."""
    counts = count_tokens(generated_text(target), target.config.vocab_size)
    return np.asarray(build_table(counts, 128)["ids"])


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("fr", [False, True])
def test_greedy_eagle_equals_plain_greedy(target, head, rows, k, fr) -> None:
    plain = run(target)
    draft = EagleDraft(head, rows if fr else None)
    spec = run(target, draft, k)
    assert spec.token_ids == plain.token_ids and spec.text == plain.text
    s = spec.extra["speculative"]
    # drafts inside the trained stretch are accepted, those after it mostly not: both verifier paths run
    assert s.accepted >= TRAINED_TOKENS // 2 and s.accepted < s.drafted, s.to_dict()
    assert s.tokens == len(spec.token_ids) == 40


def test_eagle_with_other_prompts_and_lengths(target, head, rows) -> None:
    """Contexts the head never saw (it then mostly misses) and every short length still decode exactly."""
    for prompt in ("Paris is", "A"):
        for n in (0, 1, 2, 9):
            plain = run(target, n=n, prompt=prompt)
            assert run(target, EagleDraft(head, rows), 3, n=n, prompt=prompt).token_ids == plain.token_ids


def test_draft_reused_across_generations_resyncs(target, head) -> None:
    draft = EagleDraft(head)
    first = run(target, draft, 4)
    assert run(target, draft, 4, prompt="Paris is").token_ids == run(target, prompt="Paris is").token_ids
    assert run(target, draft, 4).token_ids == first.token_ids


def test_frspec_drafts_only_table_tokens_and_its_logits_are_those_rows(target, head, rows) -> None:
    ids = target.encode_prompt(PROMPT)
    b = target.backend
    b.keep_hidden_states(True)
    b.prefill(ids)
    draft = EagleDraft(head, rows)
    draft.start(ids)
    draft.observe(b.last_hidden_states(), 0)
    pending = int(np.argmax(b.prefill(ids)))
    proposal = draft.propose(ids + [pending], 6, GREEDY, np.random.default_rng(0))
    assert len(proposal) == 6 and all(t in set(rows.tolist()) for t, _ in proposal)
    # sampled: q is zero outside the table and sums to one
    draft.start(ids)
    draft.observe(b.last_hidden_states(), 0)
    params = SamplingParams(temperature=1.0)
    for token, q in draft.propose(ids + [pending], 3, params, np.random.default_rng(1)):
        outside = np.setdiff1d(np.arange(q.size), rows)
        assert q[token] > 0 and q[outside].sum() == 0 and abs(q.sum() - 1) < 1e-9


@pytest.mark.parametrize("fr", [pytest.param(False, marks=pytest.mark.slow), True])
def test_sampled_eagle_follows_the_target_distribution(target, head, rows, fr) -> None:
    """3-token continuations at top_k=2: the 8 outcomes' exact probabilities from the target's own logits."""
    from tests.test_speculative import chi2_sf, exact_continuations

    params = SamplingParams(temperature=1.5, top_k=2)
    ids = target.encode_prompt(PROMPT)
    b = target.backend
    exact = exact_continuations(b, ids, params)
    runs = 100
    draft = EagleDraft(head, rows if fr else None)
    counts = dict.fromkeys(exact, 0)
    for seed in range(runs):
        r = run(target, draft, k=2, n=3, params=SamplingParams(temperature=1.5, top_k=2, seed=seed))
        counts[tuple(r.token_ids)] += 1
    observed = np.array(list(counts.values()), dtype=float)
    expected = np.array(list(exact.values())) * runs
    stat = float(((observed - expected) ** 2 / expected).sum())
    assert chi2_sf(stat, len(exact) - 1) > 1e-3, (observed, expected)


def test_head_round_trip_and_mismatch(target, head, tmp_path) -> None:
    path = head.save(tmp_path / "t.eagle.json", {"note": "test"})
    loaded, meta = EagleHead.load(path, target.config)
    assert meta["note"] == "test" and (tmp_path / "t.eagle.safetensors").is_file()
    for name, tensor in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    r = target.generate_result(PROMPT, max_new_tokens=24, draft=str(path), draft_tokens=3)
    assert r.token_ids == run(target, n=24).token_ids and r.extra["speculative"].accepted > 0
    with pytest.raises(edgecpm.EdgecpmError, match="EAGLE head .* trained for hidden_size"):
        EagleHead.load(path, dataclasses.replace(target.config, hidden_size=32))
    with pytest.raises(edgecpm.EdgecpmError, match="no EAGLE head at"):
        target.generate(PROMPT, draft="eagle")  # none stored beside the tiny checkpoint


def test_eagle_needs_a_backend_with_hidden_states(target, head) -> None:
    class NoHidden:  # a Backend without the HiddenStates capability
        name, vocab_size = "plain", target.backend.vocab_size
        n_past = property(lambda self: target.backend.n_past)
        prefill = target.backend.prefill
        decode = target.backend.decode
        truncate = target.backend.truncate
        reset = target.backend.reset  # no keep_hidden_states / last_hidden_states

    gen = Generator(NoHidden(), target.tokenizer, speculator=Speculator(EagleDraft(head), 3))
    with pytest.raises(edgecpm.EdgecpmError, match="does not return"):
        gen.run(target.encode_prompt(PROMPT), 5, GREEDY)


def test_freq_table_cli_counts_and_errors(target, tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(target.tokenizer.decode(generated_text(target)) + "\nParis is a city.\n", encoding="utf-8")
    ckpt = str(cached_checkpoint(TARGET))
    out = tmp_path / "t.freq.json"
    cmd = [sys.executable, "-m", "edgecpm", "freq-table", ckpt, "--text", str(corpus), "--top", "50", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = json.loads(out.read_text())
    want = Counter()
    for line in corpus.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.strip():
            want.update(target.tokenizer.encode(line, add_bos=False))
    ranked = sorted(want.items(), key=lambda kv: (-kv[1], kv[0]))[:50]
    assert table["ids"] == [t for t, _ in ranked] and table["counts"] == [c for _, c in ranked]
    assert table["corpus_tokens"] == sum(want.values()) and table["vocab_size"] == target.config.vocab_size
    assert read_ids(out, target.config.vocab_size, 10).tolist() == table["ids"][:10]
    for args, msg in (
        (["--text", str(tmp_path / "none.txt")], "no such file"),
        (["--text", str(corpus), "--top", "0"], "--top"),
    ):
        bad = subprocess.run(
            [sys.executable, "-m", "edgecpm", "freq-table", ckpt, *args], capture_output=True, text=True
        )
        assert bad.returncode == 2 and msg in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    with pytest.raises(edgecpm.EdgecpmError, match="fewer than"):
        read_ids(out, target.config.vocab_size, 51)
    with pytest.raises(edgecpm.EdgecpmError, match="vocabulary of"):
        read_ids(write_table({**table, "vocab_size": 7}, tmp_path / "x.json"), target.config.vocab_size)


def test_train_eagle_head_example(target, tmp_path, capsys) -> None:
    from tests.test_examples import run_example

    text = tmp_path / "text.txt"
    text.write_text(target.tokenizer.decode(generated_text(target)), encoding="utf-8")
    out = tmp_path / "head.eagle.json"
    ckpt = str(cached_checkpoint(TARGET))
    args = ["--text", str(text), "--tokens", "400", "--seq", "32", "--steps", "40", "--threads", "1"]
    args += ["--prompts", "6", "--prompt-tokens", "8", "--new-tokens", "8", "--gen-batch", "4"]
    vocab = target.config.vocab_size
    args += ["--fr-sizes", f"8,{vocab}"]
    log = run_example("train_eagle_head.py", ckpt, *args, "--out", str(out), capsys=capsys)
    assert "held-out first-step agreement" in log and out.is_file()
    meta = json.loads(out.read_text())
    assert meta["steps"] == 40 and meta["trained_on"] == "text.txt"
    # FR-Spec agreement per size (what the planner weighs): over every row it is the full head's agreement
    assert set(meta["held_out_top1_fr"]) == {"8", str(vocab)}
    assert meta["held_out_top1_fr"][str(vocab)] == meta["held_out_top1"]
    assert 0 <= meta["held_out_top1_fr"]["8"] <= 1
    # trained on the target's own continuations too; held out: greedy continuations, scored per draft depth
    assert meta["train_chunks"]["greedy"] == 4 and meta["train_chunks"]["sampled"] == 2
    assert meta["held_out_chunks"] == 1
    assert meta["held_out_on"] == "greedy continuations" and meta["train_depth"] == 3
    depth = meta["held_out_by_depth"]
    assert set(depth) == {"full", "8", str(vocab)} and depth["full"][0] == meta["held_out_top1"]
    assert depth[str(vocab)] == depth["full"] and len(depth["full"]) == 3
    r = target.generate_result(PROMPT, max_new_tokens=16, draft=str(out), draft_tokens=2)
    assert r.token_ids == run(target, n=16).token_ids


def _draft_chain(head, tok, feat, c, depth):
    """The draft loop by hand: the head's cache fed the target-fed pairs 0..c, then its own normed predictions
    with the next tokens, one step at a time (what EagleDraft does after a verify)."""
    cache = head.new_cache()
    g = head(tok[None, : c + 1], feat[None, : c + 1], cache)[:, -1:]
    out = [g[0, 0]]
    for s in range(1, depth):
        g = head(tok[None, c + s : c + s + 1], head.target_norm(g), cache)
        out.append(g[0, 0])
    return out


@torch.no_grad()
def test_unrolled_training_levels_are_the_draft_loop(target) -> None:
    """Level s of the masked parallel unroll (training-time test) equals the s-th step of a draft chain run
    step by step with the head's own KV cache, from every start: the mask shows each query what drafting does."""
    torch.manual_seed(3)
    h = EagleHead.for_model(target.backend.model)
    for p in h.parameters():
        p.add_(torch.randn_like(p) * 0.05)
    tok = torch.randint(target.config.vocab_size, (14,))
    feat = torch.randn(14, target.config.hidden_size)
    levels = unrolled(h, tok[None], feat[None], 3)
    assert torch.allclose(levels[0][0], h(tok[None], feat[None])[0], atol=1e-5)
    for c in range(0, 12):
        for s, g in enumerate(_draft_chain(h, tok, feat, c, 3)):
            assert torch.allclose(levels[s][0, c + s], g, atol=1e-4), (c, s)


@torch.no_grad()
def test_depth_agreement_counts_accepted_chains(target, head) -> None:
    """Per-depth acceptance against a brute-force count: every chain drafted by hand from each start, draft d
    counted only where drafts 1..d-1 equalled the target's greedy tokens."""
    model = target.backend.model
    ids = target.encode_prompt(PROMPT) + run(target, n=36).token_ids  # past the head's trained stretch too
    feats = extract(model, ids, seq=256)
    feats.starts = [len(target.encode_prompt(PROMPT)) - 3]  # score from a few tokens before the continuation
    tok, st, lab = feats.tokens[0][1:], feats.states[0][:-1], feats.labels[0][1:]
    tried, hits = [0, 0, 0], [0, 0, 0]
    for c in range(max(0, feats.starts[0] - 1), len(tok)):
        for d, g in enumerate(_draft_chain(head, tok, st, c, min(3, len(tok) - c))):
            tried[d] += 1
            ok = int(head.logits(g).argmax()) == int(lab[c + d])
            hits[d] += ok
            if not ok:
                break
    want = [round(h / n, 4) if n else None for h, n in zip(hits, tried, strict=True)]
    assert depth_agreement(head, feats, [0], None, 3) == want and 0 < hits[0] < tried[0], (want, tried)
    rows = torch.as_tensor(build_table(count_tokens(ids, target.config.vocab_size), 40)["ids"])
    restricted = depth_agreement(head, feats, [0], rows, 1)[0]
    assert restricted <= want[0]  # a target token outside the rows is never agreed with


@torch.no_grad()
def test_batched_continuations_are_the_targets_greedy_output(target) -> None:
    """Batched greedy continuations equal plain greedy decoding of each prompt, their states equal a fresh
    teacher-forced forward, and their labels are the target's argmax (the next generated token)."""
    model = target.backend.model
    ids = generated_text(target)
    prompts = torch.stack([torch.as_tensor(ids[i : i + 6]) for i in (0, 5, 11)])
    f = continuations(model, prompts, 7, batch=2)
    for r in range(3):
        want = Generator(target.backend, target.tokenizer).run(prompts[r].tolist(), 7, GREEDY).token_ids
        assert f.tokens[r].tolist() == prompts[r].tolist() + want and f.starts[r] == 6
        fresh = model.hidden_states(f.tokens[r][None])[0]
        assert torch.allclose(f.states[r], fresh, atol=1e-4)
        assert f.labels[r][5:-1].tolist() == want
    sampled = continuations(model, prompts, 7, batch=3, temperature=1.0, seed=1, kind="sampled")
    assert sampled.kinds == ["sampled"] * 3 and all(len(t) == 13 for t in sampled.tokens)


@pytest.mark.parametrize("soft", [False, True])
def test_unrolled_training_learns_its_chunk(target, soft) -> None:
    """Depth-3 unrolled training with distillation over FR-Spec rows: the head then drafts its chunk well at
    every depth (measured by the per-depth count checked above), a fresh head does not."""
    model = target.backend.model
    feats = extract(model, generated_text(target), seq=256)
    feats.tokens *= 2
    feats.states *= 2
    feats.labels *= 2
    labels = feats.labels[0].tolist()  # rows: the target's own next tokens (FR-Spec's table holds its output)
    rows = torch.as_tensor(build_table(count_tokens(labels, target.config.vocab_size), 64)["ids"])
    torch.manual_seed(1)
    h = EagleHead.for_model(model)
    before = depth_agreement(h, feats, [1], rows, 3)
    out = train(h, feats, steps=150, lr=3e-3, ce_weight=1.0, noise=0.0, depth=3, soft=soft, rows=rows, batch=2)
    after = depth_agreement(h, feats, [1], rows, 3)
    assert out["train_depth"] == 3 and out["soft_targets"] is soft
    assert after[0] >= 0.8 and after[1] >= 0.6 and after[0] > before[0], (before, after)


def test_training_ends_within_its_time_budget(target) -> None:
    feats = extract(target.backend.model, generated_text(target), seq=16)
    h = EagleHead.for_model(target.backend.model)
    out = train(h, feats, steps=100_000, max_seconds=2.0, depth=2, batch=2)
    assert 10 < out["steps"] < 100_000 and out["train_seconds"] < 2.0 + 3.0, out


def test_report_section_html_and_markdown(tmp_path: Path) -> None:
    from edgecpm.speculative.report import read_rows, section_html, section_markdown, speedup_png

    rows = [
        {"target": "torch", "task": "continue", "draft": "plain", "k": 0, "decode_speedup": 1.0, "lossless": True},
        {"target": "torch", "task": "continue", "draft": "eagle", "k": 2, "decode_speedup": 1.3,
         "acceptance_length": 2.1, "tokens_per_target_forward": 2.0, "lossless": True},
        {"target": "torch", "task": "continue", "draft": "eagle", "k": 4, "decode_speedup": 1.4,
         "acceptance_length": 2.6, "tokens_per_target_forward": 2.4, "lossless": True},
    ]  # fmt: skip
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    assert read_rows(path) == rows
    png = speedup_png(rows)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    md = section_markdown(rows, tmp_path, image="plots/speculative_speedup.png")
    assert "](plots/speculative_speedup.png)" in md and md.count("| torch | continue | eagle |") == 2
    assert "data:image/png;base64," in section_html(rows, png)
    path.write_text(json.dumps([{"k": 2}]))
    with pytest.raises(edgecpm.EdgecpmError, match="lacks 'target'"):
        read_rows(path)


def test_profile_report_carries_the_speculative_section(tiny_tied, tmp_path: Path) -> None:
    """`edgecpm profile --speculative ROWS` adds the table and the speed-up-vs-k plot to report.md/.html/.json."""
    from edgecpm.cli import main

    rows = [
        {"target": "torch", "task": "continue", "draft": "plain", "k": 0, "decode_speedup": 1.0},
        {"target": "torch", "task": "continue", "draft": "eagle", "k": 3, "decode_speedup": 1.2,
         "acceptance_length": 2.0, "tokens_per_target_forward": 1.9, "lossless": True},
    ]  # fmt: skip
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    out = tmp_path / "report"
    fast = ["--backend", "torch", "--contexts", "16,32", "--decode-tokens", "3", "--fidelity-tokens", "24"]
    argv = ["profile", str(tiny_tied), *fast, "--no-calibrate", "--speculative", str(tmp_path / "rows.json")]
    assert main([*argv, "--out", str(out), "--json"]) == 0
    md = (out / "report.md").read_text()
    assert "## Speculative decoding" in md and "(plots/speculative_speedup.png)" in md
    assert (out / "plots" / "speculative_speedup.png").read_bytes()[:4] == b"\x89PNG"
    assert "<h2>Speculative decoding</h2>" in (out / "report.html").read_text()
    assert json.loads((out / "report.json").read_text())["speculative"][1]["draft"] == "eagle"
    assert main([*argv[:-1], str(tmp_path / "missing.json"), "--out", str(out)]) == 2
