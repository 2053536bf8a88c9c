"""Public InfLLM v2 entry point: one call for prefill and decode, whichever implementation runs it."""

from __future__ import annotations

import torch

from edgecpm.config import SparseConfig
from edgecpm.errors import EdgecpmError
from edgecpm.runtime_kernels import registry
from edgecpm.runtime_kernels.infllmv2_state import InfLLMv2State


def infllmv2_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sparse: SparseConfig,
    *,
    state: InfLLMv2State | None = None,
    impl: str | None = None,
    score_q: torch.Tensor | None = None,
    score_k: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfLLM v2 sparse causal attention (dense while the context is shorter than `sparse.dense_len`).

    q `[B, Hq, T, D]`; k, v `[B, Hkv, S, D]`: the whole visible context, the T queries being its last T
    positions; returns `[B, Hq, T, D]` in q's dtype. `state` (an `InfLLMv2State`, kept per layer in the KV
    cache extras) carries the compressed keys between calls so decode only pools the newest window. `impl` is
    "reference", "vectorized", "triton" or "compiled" (the C++ CPU kernel); None lets the registry choose
    (`EDGECPM_KERNELS` overrides; on CPU the compiled kernel when it builds).
    `score_q` / `score_k` (same shapes as q / k, default q / k) are scored for block selection only: the
    pre-RoPE queries and keys when `sparse.use_nope`. With a state, pass the whole `score_k` history.
    """
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise EdgecpmError(
            f"infllmv2_attention expects q [B,Hq,T,D] and k, v [B,Hkv,S,D]; got "
            f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    b, hq, t, d = q.shape
    if k.shape[0] != b or k.shape[3] != d or hq % k.shape[1] or t > k.shape[2]:
        raise EdgecpmError(
            f"infllmv2_attention: q {list(q.shape)} does not fit k {list(k.shape)} (batch, "
            "head dim, GQA group or T > S)"
        )
    if sparse.block_size % sparse.kernel_stride:
        raise EdgecpmError(
            f"sparse block_size {sparse.block_size} is not a multiple of kernel_stride {sparse.kernel_stride}"
        )
    dense = 0 <= sparse.dense_len and k.shape[2] < sparse.dense_len
    name = registry.resolve("infllmv2", q.device, impl, build=not dense)
    ck = state.update(k if score_k is None else score_k) if state is not None else None
    if name == "reference":
        from edgecpm.runtime_kernels.infllmv2_reference import infllmv2_reference

        return infllmv2_reference(q, k, v, sparse, score_q=score_q, score_k=score_k)
    if name == "compiled":
        from edgecpm.runtime_kernels.infllmv2_compiled import infllmv2_compiled

        return infllmv2_compiled(q, k, v, sparse, ck=ck, score_q=score_q, score_k=score_k)
    if name == "triton":
        from edgecpm.runtime_kernels.infllmv2_triton import infllmv2_triton

        return infllmv2_triton(q, k, v, sparse, ck=ck, score_q=score_q, score_k=score_k)
    from edgecpm.runtime_kernels.infllmv2_vectorized import infllmv2_vectorized

    return infllmv2_vectorized(q, k, v, sparse, ck=ck, score_q=score_q, score_k=score_k)
