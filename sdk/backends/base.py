"""The `Backend` protocol: the only thing the generator and speculative decoding see.

A backend holds one sequence's decoding state. `prefill` starts a new sequence, `decode` appends tokens (one,
or several to verify a speculative draft), `truncate` rolls back, `reset` forgets. Logits are float32 numpy.
Which backends exist, and how each is opened, is the table in `registry.py`; `edgecpm.load` picks one from the
path and the artifact manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    name: str
    vocab_size: int

    @property
    def n_past(self) -> int:
        """Tokens currently held in the decoding state."""
        ...

    def prefill(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Reset, evaluate `ids`; return the last position's logits `[V]`, or `[T, V]` with all_logits."""
        ...

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        """Append `ids` (one or more) to the state; return their logits `[len(ids), V]`."""
        ...

    def truncate(self, n: int) -> None:
        """Keep only the first n tokens of the state (speculative rollback)."""
        ...

    def reset(self) -> None: ...


@runtime_checkable
class HiddenStates(Protocol):
    """Optional capability: a backend that can return the hidden states behind its logits (an EAGLE draft reads
    them). Not part of `Backend`, so backends without it stay valid."""

    def keep_hidden_states(self, on: bool = True) -> None:
        """From now on, keep the hidden states of each call (off by default: they cost memory)."""
        ...

    def last_hidden_states(self) -> np.ndarray:
        """Final-norm hidden states `[T, H]` (float32) of the T tokens of the last `prefill` / `decode` call."""
        ...


@runtime_checkable
class TreeVerify(Protocol):
    """Optional capability: evaluate a token tree after the current state in one forward (speculative tree
    drafts), then keep one root-to-node path of it. Node i attends to the cached prefix and its own ancestors
    only, at position n_past + depth(i)."""

    def tree_refusal(self, n_nodes: int | None = None) -> str | None:
        """Why a tree of n_nodes cannot be verified from the current state (None: it can); without n_nodes,
        why this backend never verifies trees (None: it may; a chain is the fallback where it cannot)."""
        ...

    def decode_tree(self, ids: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        """Append the tree (`parents[i]` is an earlier node, or -1 for a child of the cached prefix); return its
        logits `[len(ids), V]`. Until `keep_path` or `truncate`, the state holds every node."""
        ...

    def keep_path(self, nodes: Sequence[int]) -> None:
        """Keep only `nodes` of the last tree (a root-to-node path, in order) after the prefix."""
        ...
