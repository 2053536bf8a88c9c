"""Tree drafts verified in one target forward are lossless.

* The tree forward's logits for every node equal a fresh plain prefill of prefix + that node's root path (a
  second backend that never saw a tree), dense, static cache, InfLLM v2 (while dense, also with NoPE block
  scores); after `keep_path` the next decode equals a fresh run on the accepted prefix.
* Greedy tree output equals plain greedy token for token, for every draft source and for a draft whose right
  continuation is always a later sibling (so the walk must leave the first branch and the cache keep it).
* Sampling: the first emitted token follows p under recursive rejection (Monte Carlo), and whole sampled
  continuations fit the target's exact distribution (chi-square, the `exact_continuations` enumeration).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import edgecpm
from edgecpm.generation import Generator, SamplingParams, probabilities
from edgecpm.speculative import EagleDraft, ModelDraft, PromptLookupDraft, Speculator
from edgecpm.speculative.generator import verify
from edgecpm.speculative.tree import Tree, add_branches, verify_tree
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
from tests.test_speculative import PROMPT, SMALLER, TARGET, chi2_sf, exact_continuations
from tests.test_speculative_backends import LOOKUP_TASK
from tests.test_speculative_eagle import head, rows  # noqa: F401 (fixtures: a head trained on the target's text)

GREEDY = SamplingParams()
SPARSE = {  # tests/test_sparse_model.py's scaled-down InfLLM v2 settings: dense below 64 tokens
    "kernel_size": 8,
    "kernel_stride": 4,
    "init_blocks": 1,
    "block_size": 16,
    "window_size": 32,
    "topk": 3,
    "use_nope": False,
    "dense_len": 64,
}
# parents of a 9-node tree: three branches from the root, one of them branching again
PARENTS = [-1, 0, 0, 0, 1, 1, 2, 4, 6]


@pytest.fixture(scope="module")
def target() -> edgecpm.LoadedModel:
    return edgecpm.load(cached_checkpoint(TARGET))


def spec_for(kind: str) -> SyntheticSpec:
    if kind == "sparse":
        return SyntheticSpec(num_layers=2, num_heads=8, num_kv_heads=2, hidden_size=128, sparse_config=SPARSE, seed=3)
    if kind == "sparse-nope":
        return SyntheticSpec(
            num_layers=2,
            num_heads=8,
            num_kv_heads=2,
            hidden_size=128,
            sparse_config={**SPARSE, "use_nope": True},
            seed=5,
        )
    if kind == "untied-gqa":
        return SyntheticSpec(tied=False, num_layers=3, num_heads=8, num_kv_heads=2, seed=1)
    return TARGET


def root_path(parents: list[int], node: int) -> list[int]:
    out = []
    while node >= 0:
        out.append(node)
        node = parents[node]
    return out[::-1]


def run(model, draft=None, k=4, tree=1, n=40, params=GREEDY, prompt=PROMPT):
    spec = None if draft is None else Speculator(draft, k, tree)
    gen = Generator(model.backend, model.tokenizer, model.config.eos_token_ids, speculator=spec)
    return gen.run(model.encode_prompt(prompt), n, params)


@pytest.mark.parametrize("kind", ["dense", "static", "untied-gqa", "sparse", "sparse-nope"])
def test_tree_logits_equal_fresh_runs_of_each_path(kind) -> None:
    ckpt = cached_checkpoint(spec_for(kind))
    model = edgecpm.load(ckpt)
    b = model.backend
    if kind == "static":
        from edgecpm.backends.torch_backend import TorchBackend

        b = TorchBackend(b.model, cache_mode="static", max_len=128)
    fresh = edgecpm.load(ckpt).backend  # never sees a tree
    rng = np.random.default_rng(1)
    prefix = rng.integers(3, model.config.vocab_size - 8, 30).tolist()
    tokens = rng.integers(3, model.config.vocab_size - 8, len(PARENTS)).tolist()
    b.prefill(prefix)
    logits = b.decode_tree(tokens, PARENTS)
    assert logits.shape == (len(PARENTS), model.config.vocab_size) and b.n_past == len(prefix) + len(PARENTS)
    for node in range(len(PARENTS)):
        want = fresh.prefill(prefix + [tokens[i] for i in root_path(PARENTS, node)])
        np.testing.assert_allclose(logits[node], want, atol=1e-4, rtol=0, err_msg=f"node {node}")
    path = root_path(PARENTS, 8)  # 0 -> 2 -> 6 -> 8: not the first branch
    b.keep_path(path)
    accepted = prefix + [tokens[i] for i in path]
    assert b.n_past == len(accepted)
    # decode on past the accepted prefix, token by token (InfLLM v2 crosses dense_len here: its compressed
    # keys, skipped by the tree, must catch up from the compacted cache); the fresh backend decodes the same
    fresh.prefill(accepted)
    for t in rng.integers(3, model.config.vocab_size - 8, 40).tolist():
        np.testing.assert_allclose(b.decode([t]), fresh.decode([t]), atol=1e-4, rtol=0)


def test_bad_trees_are_one_line_errors(target) -> None:
    b = target.backend
    ids = target.encode_prompt(PROMPT)
    b.prefill(ids)
    for parents, match in [([-1, 2, 0], "parent 2"), ([-1, 0, 1, 3], "parent 3"), ([0, 0], "parent 0")]:
        with pytest.raises(edgecpm.EdgecpmError, match=match) as err:
            b.decode_tree([5] * len(parents), parents)
        assert "\n" not in str(err.value) and b.n_past == len(ids)  # nothing was appended
    with pytest.raises(edgecpm.EdgecpmError, match="parents"):
        b.decode_tree([5, 6], [-1])
    with pytest.raises(edgecpm.EdgecpmError, match="decode_tree call first"):
        b.keep_path([0])
    b.decode_tree([5, 6, 7], [-1, 0, 0])
    with pytest.raises(edgecpm.EdgecpmError, match="root-to-node path"):
        b.keep_path([0, 1, 2])
    with pytest.raises(edgecpm.EdgecpmError, match="keep one path"):
        b.decode([5])
    b.truncate(len(ids))  # dropping the whole tree is a valid way out
    want = edgecpm.load(cached_checkpoint(TARGET)).backend.prefill(ids + [5])
    np.testing.assert_allclose(b.decode([5])[0], want, atol=1e-4, rtol=0)
    with pytest.raises(edgecpm.EdgecpmError, match="draft_tree"):
        Speculator(PromptLookupDraft(), 4, 0)


def test_trees_are_refused_where_they_cannot_be_verified(target) -> None:
    sala = edgecpm.load(cached_checkpoint(SyntheticSpec(sala_mixers=("minicpm4", "lightning-attn"), num_layers=2)))
    with pytest.raises(edgecpm.EdgecpmError, match="lightning") as err:
        run(sala, PromptLookupDraft(), 4, tree=2, n=4)
    assert "\n" not in str(err.value)

    class NoTrees:  # a backend without the TreeVerify capability
        name, vocab_size = "plain", target.backend.vocab_size
        n_past = property(lambda self: target.backend.n_past)
        prefill, decode = target.backend.prefill, target.backend.decode
        truncate, reset = target.backend.truncate, target.backend.reset

    gen = Generator(NoTrees(), target.tokenizer, speculator=Speculator(PromptLookupDraft(), 4, 2))
    with pytest.raises(edgecpm.EdgecpmError, match="does not verify token trees"):
        gen.run(target.encode_prompt(PROMPT), 4, GREEDY)
    from edgecpm.backends.torch_backend import TorchBackend

    static = TorchBackend(target.backend.model, cache_mode="static", max_len=40)
    static.prefill(list(range(3, 38)))
    assert static.tree_refusal(5) is None and "static cache size 40" in static.tree_refusal(6)
    sparse = edgecpm.load(cached_checkpoint(spec_for("sparse"))).backend
    sparse.prefill(list(range(3, 60)))
    assert sparse.tree_refusal() is None and sparse.tree_refusal(6) is None
    assert "dense_len" in sparse.tree_refusal(7)
    with pytest.raises(edgecpm.EdgecpmError, match="dense_len"):
        sparse.decode_tree([5] * 7, [-1, 0, 0, 1, 1, 2, 2])


def test_one_child_per_node_verifies_as_the_chain_draw_for_draw() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 12)).astype(np.float32) * 2
    params = SamplingParams(temperature=1.0, top_k=6)
    for trial in range(200):
        q = [probabilities(rng.normal(size=12).astype(np.float32), params) for _ in range(4)]
        proposal = [(int(rng.choice(12, p=qi)), qi if trial % 2 else None) for qi in q]
        a, b = np.random.default_rng(trial), np.random.default_rng(trial)
        accepted, token = verify(logits, proposal, params, a)
        path, token2 = verify_tree(logits, Tree.chain(proposal), params, b)
        assert (len(path), token2) == (accepted, token) and path == list(range(accepted))
        g_accepted, g_token = verify(logits, proposal, GREEDY, a)
        g_path, g_token2 = verify_tree(logits, Tree.chain(proposal), GREEDY, b)
        assert (len(g_path), g_token2) == (g_accepted, g_token)


@pytest.mark.parametrize("siblings", ["deterministic", "drawn without replacement"])
def test_recursive_rejection_reproduces_the_target_distribution(siblings) -> None:
    """Three candidates at depth 1: the first emitted token is distributed as p (20k Monte Carlo rounds)."""
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=1.0)
    p_logits = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))
    q_logits = np.log(np.array([0.05, 0.1, 0.2, 0.4, 0.2, 0.05]))  # a poor draft
    logits = np.stack([p_logits] * 4)
    p = probabilities(p_logits, params)
    counts = np.zeros(6)
    n = 20000
    for _ in range(n):
        tree = Tree()
        if siblings == "deterministic":
            for t in (3, 4, 0):
                tree.add(t)
        else:
            add_branches(tree, -1, q_logits, 3, params, rng)
            assert len(set(tree.tokens)) == 3
        path, nxt = verify_tree(logits, tree, params, rng)
        counts[tree.tokens[path[0]] if path else nxt] += 1
    stat = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2_sf(stat, 5) > 1e-3, (counts / n, p)


class DecoyDraft:
    """Knows the target's greedy continuation; puts it second at every depth, after a wrong first branch."""

    name = "decoy"

    def __init__(self, truth: list[int], vocab: int) -> None:
        self.truth, self.vocab = truth, vocab

    def start(self, prompt_ids) -> None:
        pass

    def propose(self, context, k, params, rng):
        return []

    def propose_tree(self, context, k, width, params, rng) -> Tree:
        right = self.truth[len(context) : len(context) + k]
        tree = Tree()
        tree.insert([(t + 1) % self.vocab for t in right])  # wrong from the first token
        tree.insert(right[:1] + [(t + 7) % self.vocab for t in right[1:]])  # right once, then wrong
        tree.insert(right)  # right throughout: a later sibling at depth 2
        return tree


def test_greedy_tree_walks_off_the_first_branch(target) -> None:
    plain = run(target, n=40)
    truth = target.encode_prompt(PROMPT) + plain.token_ids
    spec = run(target, DecoyDraft(truth, target.config.vocab_size), k=4, tree=3)
    assert spec.token_ids == plain.token_ids
    s = spec.extra["speculative"]
    assert s.accepted == len(plain.token_ids) - 1 - s.rounds  # every drafted right token was accepted
    assert s.tokens_per_target_forward > 4


@pytest.fixture(scope="module")
def drafts(target) -> dict:
    return {
        "prompt-lookup": PromptLookupDraft(),
        "smaller model": ModelDraft(edgecpm.load(cached_checkpoint(SMALLER)).backend),
        "target in bfloat16": ModelDraft(edgecpm.load(cached_checkpoint(TARGET), dtype="bfloat16").backend),
    }


@pytest.mark.parametrize("source", ["prompt-lookup", "smaller model", "target in bfloat16"])
@pytest.mark.parametrize("k,width", [(1, 3), (3, 2), (5, 3)])
def test_greedy_tree_equals_plain_greedy(target, drafts, source, k, width) -> None:
    plain = run(target)
    spec = run(target, drafts[source], k, width)
    assert spec.token_ids == plain.token_ids and spec.text == plain.text
    assert spec.extra["speculative"].tokens == len(spec.token_ids)


@pytest.mark.parametrize("fr", [False, True])
def test_greedy_eagle_tree_equals_plain_greedy(target, head, rows, fr) -> None:  # noqa: F811
    """The EAGLE head reads the target's hidden states of the accepted path's nodes (not the first branch's)."""
    plain = run(target)
    draft = EagleDraft(head, rows if fr else None)
    spec = run(target, draft, 3, 3)
    assert spec.token_ids == plain.token_ids
    assert spec.extra["speculative"].accepted > 0
    # the states it was handed are a fresh target run's over the same text
    fresh = edgecpm.load(cached_checkpoint(TARGET)).backend
    fresh.keep_hidden_states(True)
    fresh.prefill(target.encode_prompt(PROMPT) + spec.token_ids)
    n = draft._features.shape[0]
    assert n >= len(spec.token_ids)
    np.testing.assert_allclose(draft._features.numpy(), fresh.last_hidden_states()[:n], atol=1e-4, rtol=0)


def test_tree_widths_accept_more_than_the_chain(target, drafts) -> None:
    """The smaller model's second choices catch some of its misses: more tokens per forward than its chain."""
    chain = run(target, drafts["smaller model"], 3, 1).extra["speculative"]
    tree = run(target, drafts["smaller model"], 3, 3).extra["speculative"]
    assert tree.accepted > chain.accepted and tree.drafted > 2 * chain.drafted


def test_prompt_lookup_tree_holds_each_distinct_continuation() -> None:
    d = PromptLookupDraft(max_ngram=2)
    rng = np.random.default_rng(0)
    ctx = [1, 2, 3, 4, 9, 1, 2, 5, 6, 9, 1, 2, 3, 7, 9, 1, 2]
    tree = d.propose_tree(ctx, 3, 3, GREEDY, rng)
    paths = {tuple(tree.tokens[i] for i in root_path(tree.parents, n)) for n in range(len(tree))}
    assert {(3, 7, 9), (5, 6, 9), (3, 4, 9)} <= paths and len(tree) == 8  # (3, ...) shared: 8 nodes, not 9
    assert tree.main_chain() == d.propose(ctx, 3, GREEDY, rng)
    assert len(d.propose_tree(ctx, 3, 1, GREEDY, rng)) == 3
    short = tree.pruned(2)  # what a round with 2 tokens left may verify
    assert sorted(zip(short.tokens, short.parents)) == [(3, -1), (4, 0), (5, -1), (6, 2), (7, 0)]


class FullTree:
    """Deterministic: every continuation the target can sample at top_k=2, in a fixed (decoy-first) order."""

    name = "full tree"

    def __init__(self, exact: dict) -> None:
        self.exact = exact

    def start(self, prompt_ids) -> None:
        self.n_prompt = len(prompt_ids)

    def propose(self, context, k, params, rng):
        return []

    def propose_tree(self, context, k, width, params, rng) -> Tree:
        done = tuple(context[self.n_prompt :])
        tree = Tree()
        for seq in sorted(self.exact, reverse=True):
            if seq[: len(done)] == done:
                tree.insert([7] + list(seq[len(done) : len(done) + k])[1:])  # a decoy branch
                tree.insert(seq[len(done) : len(done) + k])
        return tree


def four_token_continuations(b, ids: list[int], params: SamplingParams) -> dict[tuple[int, ...], float]:
    """`exact_continuations` one token further: the 3-token table times each continuation's next-token p."""
    exact = {}
    for seq, pr in exact_continuations(b, ids, params).items():
        p4 = probabilities(b.prefill(ids + list(seq)), params)
        for t4 in np.flatnonzero(p4):
            exact[(*seq, int(t4))] = pr * p4[t4]
    return exact


@pytest.mark.parametrize("source", ["smaller model", "full deterministic tree", "eagle + FR-Spec"])
def test_sampled_tree_continuations_follow_the_target_distribution(target, drafts, head, rows, source) -> None:  # noqa: F811
    """4-token continuations at top_k=2 (16 outcomes, exact probabilities from the target's logits): the
    first round verifies a depth-2 tree with two candidates per node."""
    params = SamplingParams(temperature=1.5, top_k=2)
    ids = target.encode_prompt(PROMPT)
    exact = four_token_continuations(target.backend, ids, params)
    assert len(exact) == 16
    draft = {"smaller model": drafts["smaller model"], "eagle + FR-Spec": EagleDraft(head, rows)}.get(source)
    draft = draft or FullTree(exact)
    runs = 400
    counts = dict.fromkeys(exact, 0)
    for seed in range(runs):
        r = run(target, draft, k=2, tree=3, n=4, params=SamplingParams(temperature=1.5, top_k=2, seed=seed))
        counts[tuple(r.token_ids)] += 1
    observed = np.array(list(counts.values()), dtype=float)
    expected = np.array(list(exact.values())) * runs
    stat = float(((observed - expected) ** 2 / expected).sum())
    assert chi2_sf(stat, len(exact) - 1) > 1e-3, (source, observed, expected)


def test_api_and_cli_draft_tree(target) -> None:
    plain = target.generate_result(PROMPT, max_new_tokens=16)
    small = edgecpm.load(cached_checkpoint(SMALLER))
    r = target.generate_result(PROMPT, max_new_tokens=16, draft=small, draft_tokens=3, draft_tree=2)
    assert r.token_ids == plain.token_ids and r.extra["speculative"].to_dict()["draft_tree"] == 2
    ckpt = str(cached_checkpoint(TARGET))
    args = [sys.executable, "-m", "edgecpm", "generate", ckpt, "--prompt", PROMPT, "--max-new-tokens", "12", "--json"]
    tree_args = args + ["--draft", str(cached_checkpoint(SMALLER)), "--draft-tokens", "3", "--draft-tree", "3"]
    out = json.loads(subprocess.run(tree_args, capture_output=True, text=True, check=True).stdout)
    assert out["token_ids"] == plain.token_ids[:12] and out["speculative"]["draft_tree"] == 3
    bad = subprocess.run(args + ["--draft", "prompt-lookup", "--draft-tree", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("edgecpm: error: draft_tree")


def test_smollm2_tree_is_lossless_and_exact(smollm2_path) -> None:
    """Real weights (SmolLM2-135M, torch fp32): tree logits equal fresh runs of their paths, and a prompt-lookup
    tree on an input-grounded prompt gives plain greedy's tokens."""
    m = edgecpm.load(smollm2_path, backend="torch", threads=1)
    fresh = edgecpm.load(smollm2_path, backend="torch", threads=1).backend
    msgs = [{"role": "user", "content": "Repeat this text word for word:\n\n" + LOOKUP_TASK}]
    ids = m.encode_prompt(msgs)
    m.backend.prefill(ids)
    tokens = m.tokenizer.encode(" Robert Boulter is an English film")[: len(PARENTS)]
    parents = PARENTS[: len(tokens)]
    logits = m.backend.decode_tree(tokens, parents)
    for node in (0, len(tokens) - 1):
        want = fresh.prefill(ids + [tokens[i] for i in root_path(parents, node)])
        np.testing.assert_allclose(logits[node], want, atol=1e-4, rtol=0)
    plain = m.generate_result(msgs, max_new_tokens=24)
    spec = m.generate_result(msgs, max_new_tokens=24, draft="prompt-lookup", draft_tokens=6, draft_tree=3)
    assert spec.token_ids == plain.token_ids and len(plain.token_ids) >= 12
    assert spec.extra["speculative"].tokens_per_target_forward > 1.5
