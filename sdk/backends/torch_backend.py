"""The torch backend: the reference `Model` with a `KVCache`, behind the `Backend` protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from edgecpm.backends.registry import Opened
from edgecpm.errors import EdgecpmError
from edgecpm.model import Model


class TorchBackend:
    name = "torch"

    def __init__(
        self, model: Model, *, threads: int | None = None, cache_mode: str = "dynamic", max_len: int | None = None
    ) -> None:
        self.model = model
        self.vocab_size = model.config.vocab_size
        self.threads = threads
        if threads:
            torch.set_num_threads(threads)
        self.cache = model.new_cache(cache_mode, max_len)
        # the final norm's output of the last call (what an EAGLE draft head reads; a reference, no copy), kept
        # only once asked for: a long prefill's states would otherwise stay alive until the next call
        self._hidden: torch.Tensor | None = None
        self._keep = False
        model.norm.register_forward_hook(self._keep_hidden)
        self._tree: tuple[int, list[int]] | None = None  # (prefix length, parents) of an unresolved decode_tree

    def _keep_hidden(self, module: Any, inputs: Any, output: torch.Tensor) -> None:
        if self._keep:
            self._hidden = output

    def keep_hidden_states(self, on: bool = True) -> None:
        self._keep = on
        if not on:
            self._hidden = None

    def last_hidden_states(self) -> np.ndarray:
        """`[T, H]` final-norm hidden states of the last prefill / decode's tokens (`HiddenStates` capability)."""
        if self._hidden is None:
            raise EdgecpmError("no hidden states kept: call keep_hidden_states() before prefill / decode")
        return self._hidden[0].float().numpy()

    @property
    def n_past(self) -> int:
        return self.cache.length

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        self.reset()
        if not len(ids):
            raise EdgecpmError("prefill needs at least one token")
        x = torch.as_tensor(list(ids), dtype=torch.long)[None]
        if all_logits:
            return self.model(x, self.cache)[0].numpy()
        return self.model.last_logits(x, self.cache)[0].numpy()

    @torch.inference_mode()
    def decode(self, ids: Sequence[int]) -> np.ndarray:
        if not len(ids):
            raise EdgecpmError("decode needs at least one token")
        if self._tree is not None:
            raise EdgecpmError("decode after decode_tree: keep one path (keep_path) or truncate first")
        x = torch.as_tensor(list(ids), dtype=torch.long)[None]
        return self.model(x, self.cache)[0].numpy()

    def truncate(self, n: int) -> None:
        self.cache.truncate(n)
        self._tree = None

    def reset(self) -> None:
        self.cache.reset()
        self._tree = None

    # ---- `TreeVerify` capability: a token tree in one forward, then its accepted path ----
    def tree_refusal(self, n_nodes: int | None = None) -> str | None:
        cfg = self.model.config
        if any(s.attention == "lightning" for s in cfg.layers):
            return "token trees are not verified on lightning (SALA) layers: their recurrent state is one sequence"
        sparse = cfg.sparse if any(s.attention == "infllmv2" for s in cfg.layers) else None
        if sparse is not None and sparse.dense_len < 0:
            return "token trees are verified on InfLLM v2 layers only while dense, and this model is never dense"
        cache = self.cache
        if n_nodes is not None and cache.mode == "static" and self.n_past + n_nodes > cache.max_len:
            return f"a tree of {n_nodes} tokens after {self.n_past} exceeds the static cache size {cache.max_len}"
        if sparse is not None and n_nodes is not None and self.n_past + n_nodes >= sparse.dense_len:
            return (
                f"token trees are verified on InfLLM v2 layers only while dense ({self.n_past} + {n_nodes} tokens "
                f"reach dense_len {sparse.dense_len})"
            )
        return None

    @torch.inference_mode()
    def decode_tree(self, ids: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        if len(ids) != len(parents):
            raise EdgecpmError(f"a token tree of {len(ids)} ids has {len(parents)} parents")
        reason = self.tree_refusal(len(ids))
        if reason is not None:
            raise EdgecpmError(reason)
        start = self.n_past
        x = torch.as_tensor(list(ids), dtype=torch.long)[None]
        rows = self.model.tree_logits(x, parents, self.cache)[0].numpy()
        self._tree = (start, [int(p) for p in parents])
        return rows

    def keep_path(self, nodes: Sequence[int]) -> None:
        if self._tree is None:
            raise EdgecpmError("keep_path needs a decode_tree call first (and no decode / truncate since)")
        start, parents = self._tree
        nodes = [int(i) for i in nodes]
        for i, node in enumerate(nodes):
            want = -1 if i == 0 else nodes[i - 1]
            if not 0 <= node < len(parents) or parents[node] != want:
                raise EdgecpmError(f"nodes {nodes} are not a root-to-node path of the last token tree")
        self.cache.keep(start, nodes)
        self._tree = None


def open_backend(
    path: Any,
    config: Any,
    manifest: Any = None,
    *,
    source: Any = None,
    dtype: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    ternary: str = "auto",
    **_: Any,
) -> Opened:
    """`ternary`: "auto" runs ternary (BitCPM4) linears, recognised from their values, on the packed 2-bit
    kernel; "1.6bit" packs five codes a byte; "off" keeps them as float matrices."""
    from edgecpm.progress import progress_bar
    from edgecpm.weights.ternary import swap_ternary_linears

    torch_dtype = resolve_dtype(dtype or "float32")
    with progress_bar(total=None, desc="loading weights", enabled=progress) as bar:
        model = Model.from_source(config, source, torch_dtype, progress=bar.update)
    model.ternary_layers = swap_ternary_linears(model, ternary)
    return Opened(TorchBackend(model, threads=threads))


def resolve_dtype(name: str) -> torch.dtype:
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "f32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "f16": torch.float16,
    }
    if name not in table:
        raise EdgecpmError(f"unknown dtype {name!r}; expected one of float32, bfloat16, float16")
    return table[name]
