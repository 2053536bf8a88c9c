"""`Speculator`: the draft-then-verify loop behind `Generator(..., speculator=...)`.

Each round the draft proposes up to k tokens after the context; the target evaluates the pending token and
the k drafts in ONE `decode` call (k+1 logits rows) and keeps the longest acceptable prefix:

* greedy: draft i is kept while it equals the target's argmax; the first mismatch is replaced by that argmax,
  so the output equals plain greedy decoding token for token;
* sampling: draft i (drawn from q) is kept with probability min(1, p(x)/q(x)); on rejection the token is drawn
  from norm(max(0, p - q)) (Leviathan et al. 2023; Chen et al. 2023), so every emitted token is distributed
  exactly as the target's `probabilities` (temperature, top-k, top-p) — the same function plain sampling uses.

Either way a round emits accepted + 1 tokens for one target forward. Both decoding states roll back to the
accepted prefix with `truncate` (the draft's on its next proposal). The target's state never holds the
pending (last emitted) token: it is the first token of the next verify batch. A draft with
`needs_hidden_states` (an EAGLE head) is handed the target's hidden states of every kept position (`observe`).

With `tree` > 1 the draft proposes a token tree (`edgecpm.speculative.tree`: several candidates per step),
which the target evaluates in one `decode_tree` call; `verify_tree` walks it and `keep_path` keeps the accepted
path. A round whose tree is a chain, or that the target cannot verify as a tree, is verified as a chain.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from edgecpm.backends.base import Backend, HiddenStates, TreeVerify
from edgecpm.errors import EdgecpmError
from edgecpm.generation import GenerationResult, SamplingParams, draw, probabilities, sample
from edgecpm.speculative.drafts import Draft, Proposal
from edgecpm.speculative.tree import Tree, verify_tree


class Speculator:
    """Drafts with `draft`, `k` tokens per round, verified on the generator's backend. `tree` > 1 drafts a
    token tree with up to that many candidates where a chain has one (`edgecpm.speculative.tree`), verified in
    one forward on a backend with the `TreeVerify` capability."""

    def __init__(self, draft: Draft, k: int = 4, tree: int = 1) -> None:
        if not isinstance(k, int) or k < 1:
            raise EdgecpmError(f"draft_tokens is {k!r}; expected a positive number of tokens per round")
        if not isinstance(tree, int) or tree < 1:
            raise EdgecpmError(f"draft_tree is {tree!r}; expected a positive tree width (1: a chain)")
        self.draft = draft
        self.k = k
        self.tree = tree

    def with_tree(self, tree: int) -> Speculator:
        """The same draft and k with tree width `tree` (what `draft_tree=` / `--draft-tree` set)."""
        return Speculator(self.draft, self.k, tree)

    def tokens(
        self,
        target: Backend,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        params: SamplingParams,
        rng: np.random.Generator,
        out: GenerationResult,
    ) -> Iterator[int]:
        stats = SpeculativeStats(self.draft.name, self.k, self.tree)
        out.extra["speculative"] = stats
        t0 = time.perf_counter()
        hidden = self._hidden_states(target)
        self._check_tree(target)
        logits = target.prefill(prompt_ids)
        self.draft.start(prompt_ids)
        if hidden is not None:
            self.draft.observe(hidden(), 0)
        out.prefill_seconds = time.perf_counter() - t0
        if max_new_tokens <= 0:
            return
        context = [int(t) for t in prompt_ids]
        pending = sample(logits, params, rng)
        produced = 0
        while True:
            yield pending
            produced += 1
            stats.tokens = produced
            context.append(pending)
            if produced >= max_new_tokens:
                return
            k = min(self.k, max_new_tokens - produced - 1)
            t_draft = time.perf_counter()
            tree = self._propose_tree(context, k, params, rng) if self.tree > 1 and k else None
            if tree is not None and (tree.is_chain() or target.tree_refusal(len(tree) + 1) is not None):
                proposal, tree = tree.main_chain(), None  # verified as the chain it is (or must be)
            elif tree is None:
                proposal = self.draft.propose(context, k, params, rng)[:k] if k else []
            t_verify = time.perf_counter()
            n_before = target.n_past
            if tree is not None:
                rows = target.decode_tree([pending] + tree.tokens, [-1] + [p + 1 for p in tree.parents])
                path, pending = verify_tree(rows, tree, params, rng)
                nodes = [0] + [i + 1 for i in path]
                if hidden is not None:
                    self.draft.observe(hidden()[nodes], n_before)
                target.keep_path(nodes)
                proposal, accepted, drafted = [(tree.tokens[i], None) for i in path], len(path), len(tree)
            else:
                rows = target.decode([pending] + [t for t, _ in proposal])
                accepted, pending = verify(rows, proposal, params, rng)
                if hidden is not None:  # the target's states of the pending token and the accepted drafts
                    self.draft.observe(hidden()[: accepted + 1], n_before)
                if accepted < len(proposal):
                    target.truncate(n_before + 1 + accepted)
                drafted = len(proposal)
            stats.record(drafted, accepted, t_verify - t_draft, time.perf_counter() - t_verify)
            for token, _ in proposal[:accepted]:
                yield token
                produced += 1
                stats.tokens = produced
                context.append(token)

    def _check_tree(self, target: Backend) -> None:
        """Refuse a tree on a target that cannot verify one, before anything runs."""
        if self.tree == 1:
            return
        if not isinstance(target, TreeVerify):
            raise EdgecpmError(
                f"the {target.name} backend does not verify token trees (use the torch backend, or draft_tree=1)"
            )
        reason = target.tree_refusal()
        if reason is not None:
            raise EdgecpmError(reason)

    def _propose_tree(self, context: list[int], k: int, params: SamplingParams, rng: np.random.Generator) -> Tree:
        """The draft's tree (a draft without `propose_tree` proposes its chain)."""
        if hasattr(self.draft, "propose_tree"):
            return self.draft.propose_tree(context, k, self.tree, params, rng).pruned(k)
        return Tree.chain(self.draft.propose(context, k, params, rng)[:k])

    def _hidden_states(self, target: Backend) -> Any:
        """The target's `last_hidden_states` when the draft reads them (an EAGLE head), else None."""
        if not getattr(self.draft, "needs_hidden_states", False):
            return None
        if not isinstance(target, HiddenStates):
            raise EdgecpmError(
                f"the {self.draft.name} draft reads the target's hidden states, which the {target.name} backend "
                "does not return (use the torch backend for the target)"
            )
        target.keep_hidden_states(True)
        return target.last_hidden_states


def verify(rows: np.ndarray, proposal: Proposal, params: SamplingParams, rng: np.random.Generator) -> tuple[int, int]:
    """(number of drafts accepted, the next token) given the target's logits rows for [pending, *drafts]."""
    for i, (token, q) in enumerate(proposal):
        if params.temperature == 0:
            best = int(np.argmax(rows[i]))
            if best != token:
                return i, best
            continue
        p = probabilities(rows[i], params)
        q_token = 1.0 if q is None else float(q[token])
        if q_token > 0 and rng.random() * q_token < p[token]:  # u < p/q, without dividing
            continue
        residual = p.copy()
        if q is None:
            residual[token] = 0.0
        else:
            residual = np.maximum(residual - q, 0.0)
        total = residual.sum()
        return i, draw(residual / total, rng) if total > 0 else draw(p, rng)
    return len(proposal), sample(rows[len(proposal)], params, rng)


class SpeculativeStats:
    """Acceptance and where the time went; `to_dict()` is what `generate --json` prints."""

    def __init__(self, draft: str, k: int, tree: int = 1) -> None:
        self.draft, self.k, self.tree = draft, k, tree
        self.rounds = self.drafted = self.accepted = self.tokens = 0
        self.draft_seconds = self.verify_seconds = 0.0
        self.accepted_per_round: list[int] = []

    def record(self, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        self.rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        self.draft_seconds += draft_s
        self.verify_seconds += verify_s
        self.accepted_per_round.append(accepted)

    @property
    def acceptance_length(self) -> float:
        """Tokens emitted per verify round (accepted drafts + the target's own token)."""
        return (self.accepted + self.rounds) / self.rounds if self.rounds else float("nan")

    @property
    def tokens_per_target_forward(self) -> float:
        """New tokens per target forward, counting the prefill that gives the first one."""
        return self.tokens / (self.rounds + 1) if self.tokens else float("nan")

    def to_dict(self) -> dict[str, Any]:
        def r(x: float) -> float | None:
            return None if x != x else round(x, 3)

        return {
            "draft": self.draft,
            "draft_tokens": self.k,
            "draft_tree": self.tree,
            "rounds": self.rounds,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": r(self.accepted / self.drafted) if self.drafted else None,
            "acceptance_length": r(self.acceptance_length),
            "tokens_per_target_forward": r(self.tokens_per_target_forward),
            "draft_seconds": round(self.draft_seconds, 4),
            "verify_seconds": round(self.verify_seconds, 4),
        }
