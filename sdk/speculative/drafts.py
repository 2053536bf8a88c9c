"""Draft sources: each proposes up to k next tokens for a context, with the distribution it drew them from.

A proposal is a list of `(token, q)` where `q` is the draft's distribution over the full vocabulary at that
step (what the token was drawn from), or None for a deterministic proposal (prompt lookup; a point mass).
The verifier needs q exactly to keep sampled output distributed as the target's. A draft may also offer
`propose_tree(context, k, width, ...)`: a `Tree` (`edgecpm.speculative.tree`) with up to `width` candidates
where the chain has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgecpm.backends.base import Backend
from edgecpm.errors import EdgecpmError
from edgecpm.generation import SamplingParams, draw, probabilities
from edgecpm.speculative.tree import Tree, add_branches

Proposal = list[tuple[int, "np.ndarray | None"]]


@runtime_checkable
class Draft(Protocol):
    name: str

    def start(self, prompt_ids: Sequence[int]) -> None:
        """A new sequence begins with `prompt_ids` (a model draft prefills here)."""
        ...

    def propose(self, context: Sequence[int], k: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        """Up to k tokens that may follow `context` (prompt + every token emitted so far)."""
        ...


class PromptLookupDraft:
    """Copies what followed the latest earlier occurrence of the context's last n-gram (n = max..min).

    Free to run and strong wherever the output quotes its input (summaries, edits, code, extraction).
    """

    name = "prompt-lookup"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise EdgecpmError(f"prompt lookup n-gram sizes {min_ngram}..{max_ngram}; expected 1 <= min <= max")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def start(self, prompt_ids: Sequence[int]) -> None:
        pass

    def propose(self, context: Sequence[int], k: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        if k <= 0:
            return []
        seq = np.asarray(context, dtype=np.int64)
        n_ctx = seq.size
        for n in range(min(self.max_ngram, n_ctx - 1), self.min_ngram - 1, -1):
            tail = seq[n_ctx - n :]
            # candidate starts s with seq[s:s+n] == tail and s + n < n_ctx (something follows it)
            hits = np.flatnonzero(seq[: n_ctx - n] == tail[0])
            for s in hits[::-1]:
                if s + n < n_ctx and np.array_equal(seq[s : s + n], tail):
                    follow = seq[s + n : s + n + k]
                    return [(int(t), None) for t in follow]
        return []

    def propose_tree(
        self, context: Sequence[int], k: int, width: int, params: SamplingParams, rng: np.random.Generator
    ) -> Tree:
        """Up to `width` different continuations (k tokens each), from the matches `propose` would try in
        order (longest n-gram first, latest first), merged where they share a prefix."""
        tree = Tree()
        seq = np.asarray(context, dtype=np.int64)
        n_ctx = seq.size
        branches = 0
        for n in range(min(self.max_ngram, n_ctx - 1), self.min_ngram - 1, -1):
            if k <= 0:
                break
            tail = seq[n_ctx - n :]
            for s in np.flatnonzero(seq[: n_ctx - n] == tail[0])[::-1]:
                if s + n < n_ctx and np.array_equal(seq[s : s + n], tail):
                    branches += tree.insert(seq[s + n : s + n + k].tolist()) > 0
                    if branches >= width:
                        return tree
        return tree


class ModelDraft:
    """Another model on any backend drafts autoregressively: a smaller sibling with the same tokenizer, or the
    target itself at lower precision. Its decoding state follows the context (rolled back by `truncate`)."""

    def __init__(self, backend: Backend, name: str | None = None) -> None:
        self.backend = backend
        self.name = name or f"model ({backend.name})"
        self._tokens: list[int] = []
        self._logits: np.ndarray | None = None  # logits after self._tokens

    def start(self, prompt_ids: Sequence[int]) -> None:
        self._tokens = [int(t) for t in prompt_ids]
        self._logits = self.backend.prefill(self._tokens)

    def _sync(self, context: Sequence[int]) -> np.ndarray:
        """Bring the draft's state to `context`; return its logits for the next position."""
        common = 0
        limit = min(len(self._tokens), len(context))
        while common < limit and self._tokens[common] == context[common]:
            common += 1
        if common == 0:
            self.start(context)
            return self._logits
        if common < len(self._tokens):
            self.backend.truncate(common)
            del self._tokens[common:]
            self._logits = None
        feed = [int(t) for t in context[common:]]
        if feed:
            self._logits = self.backend.decode(feed)[-1]
            self._tokens.extend(feed)
        elif self._logits is None:  # rolled back onto a token whose logits we no longer hold: replay it
            self.backend.truncate(common - 1)
            self._logits = self.backend.decode([self._tokens[-1]])[-1]
        return self._logits

    def propose(self, context: Sequence[int], k: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        if k <= 0:
            return []
        logits = self._sync(context)
        out: Proposal = []
        for i in range(k):
            if params.temperature == 0:
                token, q = int(np.argmax(logits)), None
            else:
                q = probabilities(logits, params)
                token = draw(q, rng)
            out.append((token, q))
            if i + 1 < k:
                logits = self.backend.decode([token])[-1]
                self._tokens.append(token)
                self._logits = logits
        return out

    def propose_tree(
        self, context: Sequence[int], k: int, width: int, params: SamplingParams, rng: np.random.Generator
    ) -> Tree:
        """The chain `propose` drafts, with `width` - 1 more candidates at every depth from the same logits
        (next best, or drawn without replacement): leaves that cost the draft nothing extra."""
        tree = Tree()
        if k <= 0:
            return tree
        logits = self._sync(context)
        parent = -1
        for i in range(k):
            parent = add_branches(tree, parent, logits, width, params, rng)
            if i + 1 < k:
                token = tree.tokens[parent]
                logits = self.backend.decode([token])[-1]
                self._tokens.append(token)
                self._logits = logits
        return tree


class EagleDraft:
    """An EAGLE head drafts from the target's own hidden states (`edgecpm.speculative.eagle`).

    The speculator hands it the target's final-norm hidden states of every verified position (`observe`); the
    head's KV cache holds one pair (token x_{j+1}, state of x_j) per position whose state is the target's, and
    drafted pairs (fed the head's own predicted state) are dropped on the next proposal. With `rows` (FR-Spec)
    the head's logits are computed over those token ids only.
    """

    needs_hidden_states = True

    def __init__(self, head: Any, rows: np.ndarray | None = None, name: str | None = None) -> None:
        import torch

        self.head = head
        self.vocab_size = int(head.target_config.vocab_size)
        self.row_ids = None if rows is None else torch.as_tensor(np.asarray(rows, dtype=np.int64))
        self.row_weight = None if rows is None else head.head_weight[self.row_ids].contiguous()
        self.name = name or ("eagle" if rows is None else f"eagle + FR-Spec {len(rows)}")
        self._cache = head.new_cache()
        self._features = torch.empty(0, head.target_config.hidden_size)
        self._pair_tokens: list[int] = []  # x_{j+1} of each pair in the cache whose state is the target's
        self._last = None  # head output after the last of those pairs

    def start(self, prompt_ids: Sequence[int]) -> None:
        import torch

        self._cache.reset()
        self._pair_tokens = []
        self._features = torch.empty(0, self.head.target_config.hidden_size)
        self._last = None

    def observe(self, hidden: np.ndarray, start: int) -> None:
        """The target's final-norm states of positions start.. (rows of its last prefill or verify)."""
        import torch

        if start > self._features.shape[0]:
            raise EdgecpmError(
                f"EAGLE draft: hidden states from position {start}, but it holds {self._features.shape[0]}"
            )
        rows = torch.as_tensor(np.asarray(hidden, dtype=np.float32)).reshape(-1, self._features.shape[1])
        self._features = torch.cat([self._features[:start], rows.to(self._features.dtype)])
        if len(self._pair_tokens) > start:  # a pair built on a state that was just replaced
            del self._pair_tokens[start:]
            self._cache.truncate(min(self._cache.length, start))
            self._last = None

    def _sync(self, context: Sequence[int]) -> Any:
        """Feed the pairs of `context` the head lacks; return its output after the last one `[1, 1, H]`."""
        import torch

        need = len(context) - 1  # pairs (context[p + 1], state p) for p < need
        if self._features.shape[0] < need:
            raise EdgecpmError(
                "the EAGLE draft lacks the target's hidden states for this context (run it through the Speculator)"
            )
        common = 0
        limit = min(len(self._pair_tokens), need)
        while common < limit and self._pair_tokens[common] == int(context[common + 1]):
            common += 1
        if common == need and self._last is not None and self._cache.length == common:
            return self._last
        if common == need:  # nothing new, but the output after the last pair is gone: replay it
            common -= 1
        self._cache.truncate(common)
        del self._pair_tokens[common:]
        tokens = torch.as_tensor([int(t) for t in context[common + 1 : need + 1]], dtype=torch.long)[None]
        out = self.head(tokens, self._features[common:need][None], self._cache)
        self._pair_tokens.extend(int(t) for t in context[common + 1 : need + 1])
        self._last = out[:, -1:]
        return self._last

    def propose(self, context: Sequence[int], k: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        import torch

        if k <= 0:
            return []
        with torch.inference_mode():
            state = self._sync(context)
            real = self._cache.length
            out: Proposal = []
            for i in range(k):
                logits = self.head.logits(state, self.row_weight)[0, -1]
                if params.temperature == 0:
                    j = int(torch.argmax(logits))
                    token, q = (j if self.row_ids is None else int(self.row_ids[j])), None
                else:
                    full = logits.numpy()
                    if self.row_ids is not None:
                        full = np.full(self.vocab_size, -np.inf, dtype=np.float32)
                        full[self.row_ids.numpy()] = logits.numpy()
                    q = probabilities(full, params)
                    token = draw(q, rng)
                out.append((token, q))
                if i + 1 < k:
                    tok = torch.tensor([[token]], dtype=torch.long)
                    state = self.head(tok, self.head.target_norm(state), self._cache)[:, -1:]
            self._cache.truncate(real)  # drafted pairs never stay: their state was the head's guess
        return out

    def propose_tree(
        self, context: Sequence[int], k: int, width: int, params: SamplingParams, rng: np.random.Generator
    ) -> Tree:
        """The chain `propose` drafts, with `width` - 1 more candidates (leaves) at every depth."""
        import torch

        tree = Tree()
        if k <= 0:
            return tree
        with torch.inference_mode():
            state = self._sync(context)
            real = self._cache.length
            parent = -1
            for i in range(k):
                logits = self.head.logits(state, self.row_weight)[0, -1].float().numpy()
                if self.row_ids is not None:
                    full = np.full(self.vocab_size, -np.inf, dtype=np.float32)
                    full[self.row_ids.numpy()] = logits
                    logits = full
                parent = add_branches(tree, parent, logits, width, params, rng)
                if i + 1 < k:
                    tok = torch.tensor([[tree.tokens[parent]]], dtype=torch.long)
                    state = self.head(tok, self.head.target_norm(state), self._cache)[:, -1:]
            self._cache.truncate(real)
        return tree
