"""Attention and matmul kernels the reference model and the exporters share.

Tensor layout everywhere: queries `[B, Hq, T, D]`, keys/values `[B, Hkv, S, D]` holding the whole visible
context (cache plus the T new tokens, which are its last T positions), output `[B, Hq, T, D]`.
"""

from __future__ import annotations

from .dense import dense_attention

__all__ = ["dense_attention"]
