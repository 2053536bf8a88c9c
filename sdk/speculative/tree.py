"""Token trees for speculative decoding: what a tree draft proposes, and how the target's rows verify it.

A `Tree` holds draft nodes after the pending token: `tokens[i]`, `parents[i]` (an earlier node, or -1 for a
child of the pending token) and `qs[i]`, the distribution node i's token was drawn from given its parent and
its earlier siblings (None: a deterministic proposal, a point mass). Siblings carry distinct tokens.

`verify_tree` walks the tree from the pending token with the target's logits rows (row 0: the pending token,
row i + 1: node i):

* greedy: move to the child whose token is the target's argmax; stop at the first node without one and emit
  that argmax, so the output equals plain greedy decoding;
* sampling: the children are tried in order with recursive rejection (SpecInfer, Miao et al. 2024; EAGLE):
  child x, drawn from q, is accepted with probability min(1, r(x)/q(x)) where r starts as the target's p; on
  rejection r becomes norm(max(0, r − q)) (a point mass q: r with x removed) and the next child is tried; when
  all are rejected the token is drawn from r. Siblings drawn from q without replacement each carry their own
  q (q with the earlier siblings removed), which keeps every emitted token distributed exactly as p.

With one child per node this is the chain rule of `generator.verify`, draw for draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgecpm.generation import SamplingParams, draw, probabilities


@dataclass
class Tree:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    qs: list[np.ndarray | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, parent: int = -1, q: np.ndarray | None = None) -> int:
        """Append a node; return its index."""
        self.tokens.append(int(token))
        self.parents.append(int(parent))
        self.qs.append(q)
        return len(self.tokens) - 1

    def insert(self, seq: Sequence[int]) -> int:
        """Add a deterministic path from the pending token, sharing existing prefixes (a trie); return how many
        nodes were new."""
        node, added = -1, 0
        for token in seq:
            child = next((c for c in self.children(node) if self.tokens[c] == int(token)), None)
            if child is None:
                child, added = self.add(int(token), node), added + 1
            node = child
        return added

    def children(self, node: int) -> list[int]:
        return [i for i, p in enumerate(self.parents) if p == node]

    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    def main_chain(self) -> list[tuple[int, np.ndarray | None]]:
        """The path through every node's first child, as a chain `Proposal`."""
        out, node = [], -1
        while kids := self.children(node):
            node = kids[0]
            out.append((self.tokens[node], self.qs[node]))
        return out

    def pruned(self, max_depth: int) -> Tree:
        """The nodes at most `max_depth` tokens deep (what a round may still emit), renumbered."""
        depth: list[int] = []
        for p in self.parents:
            depth.append(1 if p < 0 else depth[p] + 1)
        if all(d <= max_depth for d in depth):
            return self
        out, new = Tree(), {}
        for i, d in enumerate(depth):
            if d <= max_depth:
                new[i] = out.add(self.tokens[i], -1 if self.parents[i] < 0 else new[self.parents[i]], self.qs[i])
        return out

    @classmethod
    def chain(cls, proposal: Sequence[tuple[int, np.ndarray | None]]) -> Tree:
        tree = cls()
        for i, (token, q) in enumerate(proposal):
            tree.add(token, i - 1, q)
        return tree


def verify_tree(
    rows: np.ndarray, tree: Tree, params: SamplingParams, rng: np.random.Generator
) -> tuple[list[int], int]:
    """(accepted nodes, root to leaf, the next token) given the target's rows for [pending, *tree.tokens]."""
    kids: dict[int, list[int]] = {}
    for i, p in enumerate(tree.parents):
        kids.setdefault(p, []).append(i)
    path: list[int] = []
    node = -1
    while True:
        row = rows[node + 1]
        children = kids.get(node, [])
        if params.temperature == 0:
            best = int(np.argmax(row))
            node = next((c for c in children if tree.tokens[c] == best), -2)
            if node == -2:
                return path, best
            path.append(node)
            continue
        p = probabilities(row, params)
        r = p
        chosen = None
        for c in children:
            token, q = tree.tokens[c], tree.qs[c]
            q_token = 1.0 if q is None else float(q[token])
            if q_token > 0 and rng.random() * q_token < r[token]:  # u < r/q, without dividing
                chosen = c
                break
            r = r.copy()
            if q is None:
                r[token] = 0.0
            else:
                r = np.maximum(r - q, 0.0)
            total = r.sum()
            r = r / total if total > 0 else p
        if chosen is None:
            return path, draw(r, rng)
        path.append(chosen)
        node = chosen


def add_branches(
    tree: Tree, parent: int, logits: np.ndarray, width: int, params: SamplingParams, rng: np.random.Generator
) -> int:
    """Add up to `width` children of `parent` from one draft step's full-vocabulary logits: greedy, the argmax
    then the next best; sampling, draws from q without replacement, each child with the q it was drawn from.
    Return the first child (a chain draft's token: the tree's chain goes on from it)."""
    if params.temperature == 0:
        token = int(np.argmax(logits))
        first = tree.add(token, parent)
        if width > 1:
            rest = np.array(logits, dtype=np.float32)
            rest[token] = -np.inf
            top = np.argpartition(-rest, width - 2)[: width - 1]
            for t in top[np.argsort(-rest[top], kind="stable")]:
                if np.isfinite(rest[t]):
                    tree.add(int(t), parent)
        return first
    q = probabilities(logits, params)
    token = draw(q, rng)
    first = tree.add(token, parent, q)
    for _ in range(width - 1):
        q = q.copy()
        q[token] = 0.0
        total = q.sum()
        if total <= 0:
            break
        q = q / total
        token = draw(q, rng)
        tree.add(token, parent, q)
    return first
