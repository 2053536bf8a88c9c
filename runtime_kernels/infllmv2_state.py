"""Decode state of one InfLLM v2 layer: the compressed keys, extended incrementally.

Kept in `KVCache.layers[i].extras["infllmv2"]`. Each call sees the whole visible key tensor and only the
windows that became complete since the last call are mean-pooled (one new kernel every `kernel_stride`
tokens); the prefix is never recompressed. `truncate(n)` drops the kernels that reach past token n, so
speculative rollback keeps the state consistent with the KV cache.
"""

from __future__ import annotations

import torch

from edgecpm.config import SparseConfig
from edgecpm.runtime_kernels.infllmv2_vectorized import compress_keys, num_kernels


class InfLLMv2State:
    """Compressed keys `[B, Hkv, NC, D]` (fp32) covering the first `length` tokens."""

    def __init__(self, sparse: SparseConfig) -> None:
        self.sparse = sparse
        self.ck: torch.Tensor | None = None
        self.length = 0
        self.kernels_computed = 0  # kernels ever pooled (lets tests prove nothing is recomputed)

    def update(self, k: torch.Tensor) -> torch.Tensor:
        """Extend to cover all of `k` `[B, Hkv, S, D]` and return the compressed keys."""
        ks, st = self.sparse.kernel_size, self.sparse.kernel_stride
        s = k.shape[2]
        if s < self.length:  # the cache was rolled back without us: drop what no longer exists
            self.truncate(s)
        have = 0 if self.ck is None else self.ck.shape[2]
        need = num_kernels(s, ks, st)
        if self.ck is None:
            self.ck = k.new_zeros((k.shape[0], k.shape[1], 0, k.shape[3]), dtype=torch.float32)
        if need > have:
            tail = k[:, :, have * st : (need - 1) * st + ks]
            self.ck = torch.cat([self.ck, compress_keys(tail, ks, st)], dim=2)
            self.kernels_computed += need - have
        self.length = s
        return self.ck

    def truncate(self, n: int) -> None:
        """Keep the state of the first n tokens."""
        if self.ck is not None:
            self.ck = self.ck[:, :, : num_kernels(n, self.sparse.kernel_size, self.sparse.kernel_stride)]
        self.length = min(self.length, n)


class KeyHistory:
    """All keys seen so far (the pre-RoPE keys a `use_nope` layer scores with), truncatable with the cache."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None

    def append(self, k_new: torch.Tensor, start: int) -> torch.Tensor:
        """Add the keys of positions start.. and return the whole history."""
        self.k = k_new if self.k is None or start == 0 else torch.cat([self.k[:, :, :start], k_new], dim=2)
        return self.k

    def truncate(self, n: int) -> None:
        if self.k is not None:
            self.k = self.k[:, :, :n]
