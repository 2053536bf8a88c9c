"""The reference model's building blocks: RMSNorm, LongRoPE rotary embedding, SwiGLU MLP.

Kept apart from `model.py` (the forward pass) and `attention_layers.py` (the attention kinds), which both use
them, so neither imports the other's module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgecpm.config import ModelConfig


class RMSNorm(nn.Module):
    """MiniCPM RMSNorm: variance in fp32, cast back to the input dtype before the weight multiply."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


class RotaryEmbedding(nn.Module):
    """MiniCPM LongRoPE: freqs[t, i] = (t / factor[i]) * inv_freq[i], in fp32, half-split layout."""

    def __init__(self, config: ModelConfig, head_dim: int | None = None) -> None:
        super().__init__()
        d = head_dim or config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        rs = config.rope_scaling if (head_dim is None or head_dim == config.head_dim) else None
        self.short = torch.tensor(rs.short_factor, dtype=torch.float32) if rs else None
        self.long = torch.tensor(rs.long_factor, dtype=torch.float32) if rs else None
        self.original_max = rs.original_max_position_embeddings if rs else None
        self.mscale = config.rope_mscale

    def cos_sin(self, positions: torch.Tensor, total_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = positions.to(torch.float32)
        if self.short is not None:
            factors = self.long if total_len > self.original_max else self.short
            freqs = (t[:, None] / factors[None, :]) * self.inv_freq[None, :]
        else:
            freqs = t[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos() * self.mscale, emb.sin() * self.mscale


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `[B, H, T, D]` in fp32 and cast back (as the published code does)."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
