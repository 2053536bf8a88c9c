"""Lightning attention (MiniCPM-SALA linear layers): simple gated linear attention with a fixed per-head decay.

    S_t = exp(g_h) * S_{t-1} + k_tᵀ v_t          (state S: [Dk, Dv] per head, fp32)
    o_t = scale * q_t S_t

Layouts: q, k `[B, H, T, Dk]`, v `[B, H, T, Dv]`, `log_decay` `[H]` (g_h < 0), state `[B, H, Dk, Dv]`.
Every implementation returns `(out [B, H, T, Dv] fp32, final state)`, so a chunked prefill and a token-by-token
decode continue from one another. The reference steps one token at a time; the vectorized version works in
chunks (intra-chunk attention with a decay mask plus the carried state), which is what makes prefill fast.
"""

from __future__ import annotations

import math

import torch

from edgecpm.errors import EdgecpmError
from edgecpm.runtime_kernels import registry

CHUNK = 64


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi slopes: for a power of two n, slope_h = 2^(-8(h+1)/n); otherwise the standard interleave."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return power_of_two(num_heads)
    closest = 2 ** int(math.floor(math.log2(num_heads)))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def sala_log_decay(num_heads: int) -> torch.Tensor:
    """MiniCPM-SALA decay: g_h = -slope_h (the same in every layer)."""
    return -torch.tensor(alibi_slopes(num_heads), dtype=torch.float32)


def lightning_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token at a time, straight from the recurrence."""
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    s = torch.zeros(b, h, dk, dv) if state is None else state.float().clone()
    decay = torch.exp(log_decay.float())[None, :, None, None]
    out = torch.empty(b, h, t, dv)
    for i in range(t):
        s = decay * s + k[:, :, i].float()[..., :, None] * v[:, :, i].float()[..., None, :]
        out[:, :, i] = scale * torch.einsum("bhk,bhkv->bhv", q[:, :, i].float(), s)
    return out, s


def lightning_vectorized(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float,
    state: torch.Tensor | None = None,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked form: per chunk, intra-chunk attention under a decay mask plus the state carried in."""
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    q, k, v = q.float(), k.float(), v.float()
    s = q.new_zeros(b, h, dk, dv) if state is None else state.float()
    g = log_decay.float().to(q.device)[None, :, None]  # [1, H, 1]
    outs = []
    for start in range(0, t, chunk):
        qc, kc, vc = q[:, :, start : start + chunk], k[:, :, start : start + chunk], v[:, :, start : start + chunk]
        n = qc.shape[2]
        i = torch.arange(n, device=q.device, dtype=torch.float32)
        diff = i[:, None] - i[None, :]
        mask = torch.exp(g[..., None] * diff.clamp(min=0)) * (diff >= 0)  # [1, H, n, n]
        o = torch.matmul(torch.matmul(qc, kc.transpose(-1, -2)) * mask, vc)
        o = o + torch.matmul(qc * torch.exp(g * (i + 1))[..., None], s)
        outs.append(o * scale)
        k_decayed = kc * torch.exp(g * (n - 1 - i))[..., None]  # decay from each token to the chunk end
        s = s * torch.exp(g * n)[..., None] + torch.matmul(k_decayed.transpose(-1, -2), vc)
    return torch.cat(outs, dim=2), s


def lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    scale: float | None = None,
    state: torch.Tensor | None = None,
    impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lightning attention of T new tokens continuing from `state`; returns (out fp32, new state)."""
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise EdgecpmError(
            f"lightning_attention expects q, k [B,H,T,Dk] and v [B,H,T,Dv]; got {list(q.shape)}, "
            f"{list(k.shape)}, {list(v.shape)}"
        )
    if log_decay.shape != (q.shape[1],):
        raise EdgecpmError(
            f"lightning_attention: log_decay has shape {list(log_decay.shape)}; expected [{q.shape[1]}] (one per head)"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    name = registry.resolve("lightning", q.device, impl)
    if name == "reference":
        return lightning_reference(q, k, v, log_decay, scale, state)
    if name == "triton":
        from edgecpm.runtime_kernels.lightning_triton import lightning_triton

        return lightning_triton(q, k, v, log_decay, scale, state)
    return lightning_vectorized(q, k, v, log_decay, scale, state)


ROLLBACK_TOKENS = 16  # a lightning state can always be rolled back over at least this many latest tokens
# (a speculative round drafts at most 8 tokens, one call each, and verifies at most 9 in one call)


class LightningState:
    """Recurrent state of one lightning layer in `KVCache.layers[i].extras["lightning"]`.

    The state after n tokens cannot be recovered from the state after more tokens, so for rollback (speculative
    decoding, whose drafts and verifications span several calls) a base state at an earlier position and the
    keys/values since then are kept: `truncate(n)` replays the kept tokens up to n. The base trails the current
    length by `ROLLBACK_TOKENS` to 2 x `ROLLBACK_TOKENS` tokens (or by the latest call, if that was longer and
    not over 2 x `ROLLBACK_TOKENS`); a long call is split where the new base falls, so keeping it costs no extra
    recurrence there, and in decode the base moves by one replay of `ROLLBACK_TOKENS` tokens every as many
    tokens. Kept memory per layer: one state plus at most 2 x `ROLLBACK_TOKENS` tokens of keys and values.
    Rolling back further raises `EdgecpmError`.
    """

    def __init__(self, rollback_tokens: int = ROLLBACK_TOKENS) -> None:
        self.state: torch.Tensor | None = None
        self.length = 0
        self.rollback_tokens = rollback_tokens
        self._base_state: torch.Tensor | None = None
        self._base_len = 0
        self._kept: tuple[torch.Tensor, torch.Tensor] | None = None  # keys/values of [base_len, length)
        self._log_decay: torch.Tensor | None = None

    def run(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        log_decay: torch.Tensor,
        scale: float,
        impl: str | None = None,
    ) -> torch.Tensor:
        """Attend T new tokens and advance the state; returns `[B, H, T, Dv]` fp32."""
        self._log_decay = log_decay
        t, w = q.shape[2], self.rollback_tokens
        if self.length + t - self._base_len <= 2 * w:
            return self._advance(q, k, v, scale, impl)
        new_base = self.length + t - w
        if new_base <= self.length:  # inside what is kept: replay up to it (at most w tokens, once per w)
            self._rebase(new_base)
            return self._advance(q, k, v, scale, impl)
        split = new_base - self.length  # inside this call: run it in two parts, the base between them
        self._rebase(self.length)
        head = self._advance(q[:, :, :split], k[:, :, :split], v[:, :, :split], scale, impl)
        self._rebase(self.length)
        tail = self._advance(q[:, :, split:], k[:, :, split:], v[:, :, split:], scale, impl)
        return torch.cat([head, tail], dim=2)

    def truncate(self, n: int) -> None:
        if n == self.length:
            return
        if not self._base_len <= n < self.length:
            raise EdgecpmError(
                f"cannot roll a lightning-attention state back from {self.length} to {n} tokens "
                f"(only to {self._base_len}..{self.length}: the state keeps the latest {self.length - self._base_len})"
            )
        self.state = self._replay(n - self._base_len)
        assert self._kept is not None
        k, v = self._kept
        keep = n - self._base_len
        self._kept = (k[:, :, :keep], v[:, :, :keep])
        self.length = n

    def _advance(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, impl: str | None):
        assert self._log_decay is not None
        out, self.state = lightning_attention(q, k, v, self._log_decay, scale=scale, state=self.state, impl=impl)
        self._kept = (
            (k.contiguous(), v.contiguous())  # its own copy: a view would keep the whole call's keys alive
            if self._kept is None
            else (torch.cat([self._kept[0], k], 2), torch.cat([self._kept[1], v], 2))
        )
        self.length += q.shape[2]
        return out

    def _replay(self, keep: int) -> torch.Tensor | None:
        """The state after the first `keep` kept tokens, from the base state (queries do not matter)."""
        if keep == 0:
            return self._base_state
        assert self._kept is not None and self._log_decay is not None
        k, v = self._kept[0][:, :, :keep], self._kept[1][:, :, :keep]
        _, state = lightning_vectorized(k, k, v, self._log_decay, 1.0, self._base_state)
        return state

    def _rebase(self, position: int) -> None:
        """Move the base state forward to `position` (between the base and the current length)."""
        keep = position - self._base_len
        self._base_state = self.state if position == self.length else self._replay(keep)
        if self._kept is not None:
            self._kept = (self._kept[0][:, :, keep:].contiguous(), self._kept[1][:, :, keep:].contiguous())
        self._base_len = position
