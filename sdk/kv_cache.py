"""`KVCache`: explicit decoding state for the reference model.

Two modes: `static` preallocates `[B, Hkv, max_len, D]` per layer (fixed shapes, what exporters need) and
`dynamic` grows by concatenation. `truncate(n)` rolls the state back to its first n tokens, which is how
speculative decoding discards rejected draft tokens. Kernels that keep extra per-layer state (InfLLM v2's
compressed keys, lightning attention's recurrent state) store it in `LayerState.extras`; any extra with a
`truncate(n)` method is rolled back with the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from edgecpm.config import ModelConfig
from edgecpm.errors import EdgecpmError

CacheMode = Literal["static", "dynamic"]


@dataclass
class LayerState:
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class KVCache:
    def __init__(
        self,
        config: ModelConfig,
        *,
        mode: CacheMode = "dynamic",
        max_len: int | None = None,
        batch: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if mode not in ("static", "dynamic"):
            raise EdgecpmError(f"KV cache mode {mode!r}; expected 'static' or 'dynamic'")
        if mode == "static" and not max_len:
            raise EdgecpmError("a static KV cache needs max_len")
        self.config = config
        self.mode = mode
        self.max_len = max_len
        self.batch = batch
        self.dtype = dtype
        self.length = 0
        self.layers = [LayerState() for _ in config.layers]
        if mode == "static":
            shape = (batch, config.num_kv_heads, max_len, config.head_dim)
            for spec, state in zip(config.layers, self.layers):
                if spec.attention != "lightning":
                    state.k = torch.zeros(shape, dtype=dtype)
                    state.v = torch.zeros(shape, dtype=dtype)

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values for one layer; return the whole visible context."""
        state = self.layers[layer]
        start, t = self.length, k_new.shape[2]
        if self.mode == "static":
            if start + t > self.max_len:
                raise EdgecpmError(f"context of {start + t} tokens exceeds the static cache size {self.max_len}")
            state.k[:, :, start : start + t] = k_new
            state.v[:, :, start : start + t] = v_new
            return state.k[:, :, : start + t], state.v[:, :, : start + t]
        if state.k is None or start == 0:
            state.k, state.v = k_new, v_new
        else:
            state.k = torch.cat([state.k[:, :, :start], k_new], dim=2)
            state.v = torch.cat([state.v[:, :, :start], v_new], dim=2)
        return state.k, state.v

    def advance(self, t: int) -> None:
        self.length += t

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (speculative rollback)."""
        if n < 0 or n > self.length:
            raise EdgecpmError(f"cannot truncate a cache of {self.length} tokens to {n}")
        for state in self.layers:
            if self.mode == "dynamic" and state.k is not None:
                state.k = state.k[:, :, :n]
                state.v = state.v[:, :, :n]
            for extra in state.extras.values():
                if hasattr(extra, "truncate"):
                    extra.truncate(n)
        self.length = n

    def keep(self, start: int, offsets: Sequence[int]) -> None:
        """Keep the first `start` tokens and then the tokens at start + offsets (ascending), in that order: a
        verified token tree compacted to its accepted path. Per-token key histories (`extras` with a `k`
        tensor) are compacted alike; other extras are rolled back to `start` (they rebuild from the cache)."""
        idx = torch.as_tensor([start + int(o) for o in offsets], dtype=torch.long)
        if len(idx) and (int(idx[0]) < start or int(idx[-1]) >= self.length or bool((idx[1:] <= idx[:-1]).any())):
            raise EdgecpmError(f"cannot keep offsets {list(offsets)} after {start} of a {self.length}-token cache")
        n = start + len(idx)

        def compact(x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
            if in_place:  # a static cache keeps its preallocated tensors
                x[:, :, start:n] = x[:, :, idx]
                return x
            return torch.cat([x[:, :, :start], x[:, :, idx]], dim=2)

        static = self.mode == "static"
        for state in self.layers:
            if state.k is not None:
                state.k, state.v = compact(state.k, static), compact(state.v, static)
            for extra in state.extras.values():
                if isinstance(getattr(extra, "k", None), torch.Tensor):
                    extra.k = compact(extra.k)
                elif hasattr(extra, "truncate"):
                    extra.truncate(start)
        self.length = n

    def reset(self) -> None:
        self.length = 0
        for state in self.layers:
            state.extras.clear()
            if self.mode == "dynamic":
                state.k = state.v = None
