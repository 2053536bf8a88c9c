"""Draft sources: each proposes up to k next tokens for a context, with the distribution it drew them from.

A proposal is a list of `(token, q)` where `q` is the draft's distribution over the full vocabulary at that
step (what the token was drawn from), or None for a deterministic proposal (prompt lookup; a point mass).
The verifier needs q exactly to keep sampled output distributed as the target's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from edgecpm.backends.base import Backend
from edgecpm.errors import EdgecpmError
from edgecpm.generation import SamplingParams, draw, probabilities

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
