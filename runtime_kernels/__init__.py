"""Attention and matmul kernels the reference model and the exporters share.

Tensor layout everywhere: queries `[B, Hq, T, D]`, keys/values `[B, Hkv, S, D]` holding the whole visible
context (cache plus the T new tokens, which are its last T positions), output `[B, Hq, T, D]`.

Each kernel has a plain torch reference, a vectorized torch implementation (the CPU path and what exporters
trace) and a Triton kernel; `registry.resolve` picks one (argument > `EDGECPM_KERNELS` > device). Importing
this package registers the `torch.ops.edgecpm.*` custom ops.
"""

from __future__ import annotations

from edgecpm.runtime_kernels import ops  # noqa: F401  (registers torch.ops.edgecpm.*)
from edgecpm.runtime_kernels.dense import dense_attention
from edgecpm.runtime_kernels.infllmv2 import infllmv2_attention
from edgecpm.runtime_kernels.infllmv2_state import InfLLMv2State
from edgecpm.runtime_kernels.lightning import LightningState, lightning_attention, sala_log_decay
from edgecpm.runtime_kernels.ops import infllmv2_decomposition
from edgecpm.runtime_kernels.registry import resolve as resolve_impl
from edgecpm.runtime_kernels.ternary import TernaryLinear, TernaryWeight, quantize_ternary, ternary_matmul

__all__ = [
    "dense_attention",
    "infllmv2_attention",
    "InfLLMv2State",
    "infllmv2_decomposition",
    "resolve_impl",
    "lightning_attention",
    "LightningState",
    "sala_log_decay",
    "TernaryWeight",
    "TernaryLinear",
    "quantize_ternary",
    "ternary_matmul",
]
