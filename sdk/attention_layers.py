"""Attention blocks of the reference model, one class per `LayerSpec.attention` kind.

Each block owns its projections and calls a `runtime_kernels` op for the attention math. Signature:
`forward(x [B,T,H], cos, sin, cache | None, layer_index) -> [B,T,H]`; softmax blocks also take a token tree's
attention mask (`tree_mask`, speculative tree verification).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgecpm.config import LayerSpec, ModelConfig
from edgecpm.kv_cache import KVCache
from edgecpm.layers import RMSNorm, apply_rotary
from edgecpm.runtime_kernels import InfLLMv2State, dense_attention, infllmv2_attention
from edgecpm.runtime_kernels.infllmv2_state import KeyHistory
from edgecpm.runtime_kernels.lightning import LightningState, lightning_attention, sala_log_decay


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

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        layer_index: int,
        tree_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`tree_mask` `[T, S]` (a token tree, `Model.tree_logits`): which keys each query sees, densely."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        score_q = score_k = None
        if self.use_rope:
            if self.sparse is not None and self.sparse.use_nope:  # select blocks with the pre-RoPE q/k
                score_q, score_k = q, k
                if cache is not None:
                    history = cache.layers[layer_index].extras.setdefault("infllmv2_nope_k", KeyHistory())
                    score_k = history.append(k, cache.length)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer_index, k, v)
        if tree_mask is None:
            out = self.attend(q, k, v, cache, layer_index, score_q, score_k)
        else:  # InfLLM v2 trees are verified only while dense; its compressed keys catch up on the next call
            out = masked_attention(q, k, v, tree_mask)
        out = out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        if self.o_gate is not None:
            out = out * torch.sigmoid(self.o_gate(x))
        return self.o_proj(out)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: KVCache | None,
        layer_index: int,
        score_q: torch.Tensor | None = None,
        score_k: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Dense, or InfLLM v2 (which itself stays dense while the context is shorter than `dense_len`)."""
        if self.sparse is None:
            return dense_attention(q, k, v)
        state = None
        if cache is not None:
            state = cache.layers[layer_index].extras.setdefault("infllmv2", InfLLMv2State(self.sparse))
        return infllmv2_attention(q, k, v, self.sparse, state=state, score_q=score_q, score_k=score_k)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of T queries `[B, Hq, T, D]` over S keys where `mask[i, j]` lets query i see key j, with GQA
    folded as `dense_attention` folds it (so a chain's causal mask gives its numbers)."""
    b, hq, t, d = q.shape
    g = hq // k.shape[1]
    qg = q.reshape(b, k.shape[1], g * t, d)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask.repeat(g, 1), scale=1.0 / math.sqrt(d))
    return out.view(b, hq, t, d)


class LightningAttention(nn.Module):
    """MiniCPM-SALA lightning layer: q/k/v projections, per-head q/k RMSNorm, RoPE (plain, theta from the
    config, no LongRoPE factors), simple-GLA recurrence with per-head decay -slope_h, `o_norm` over all heads,
    sigmoid gate `z_proj`, `o_proj`. The recurrent state lives in `cache.layers[i].extras["lightning"]`.
    """

    def __init__(self, config: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        lc = config.lightning
        if lc is None:
            raise NotImplementedError("a lightning layer needs config.lightning")
        h = config.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = lc.num_heads, lc.num_kv_heads, lc.head_dim
        inner = lc.num_heads * lc.head_dim
        self.q_proj = nn.Linear(h, inner, bias=False)
        self.k_proj = nn.Linear(h, lc.num_kv_heads * lc.head_dim, bias=False)
        self.v_proj = nn.Linear(h, lc.num_kv_heads * lc.head_dim, bias=False)
        self.o_proj = nn.Linear(inner, h, bias=False)
        self.q_norm = RMSNorm(lc.head_dim, config.rms_norm_eps) if lc.qk_norm else None
        self.k_norm = RMSNorm(lc.head_dim, config.rms_norm_eps) if lc.qk_norm else None
        self.o_norm = RMSNorm(inner, config.rms_norm_eps) if lc.output_norm else None
        self.z_proj = nn.Linear(h, inner, bias=False) if lc.output_gate else None
        self.use_rope = spec.use_rope
        self.rope_theta = config.rope_theta
        self.scale = lc.head_dim**-0.5
        # not a buffer: the model is built on the meta device and `to_empty` would leave a buffer uninitialized
        self._log_decay: torch.Tensor | None = None

    def _rope(self, x: torch.Tensor, start: int) -> torch.Tensor:
        d = self.head_dim
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)).float()
        freqs = torch.arange(start, start + x.shape[2], dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return apply_rotary(x, emb.cos(), emb.sin())

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None, layer_index: int
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).float()
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).float()
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).float()
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.num_kv_heads != self.num_heads:
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        start = cache.length if cache is not None else 0
        if self.use_rope:
            q, k = self._rope(q, start), self._rope(k, start)
        if self._log_decay is None or self._log_decay.device != q.device:
            self._log_decay = sala_log_decay(self.num_heads).to(q.device)
        log_decay = self._log_decay
        if cache is not None:
            state = cache.layers[layer_index].extras.setdefault("lightning", LightningState())
            out = state.run(q, k, v, log_decay, self.scale)
        else:
            out, _ = lightning_attention(q, k, v, log_decay, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim).to(x.dtype)
        if self.o_norm is not None:
            out = self.o_norm(out)
        if self.z_proj is not None:
            out = out * torch.sigmoid(self.z_proj(x))
        return self.o_proj(out)


def build(config: ModelConfig, spec: LayerSpec) -> nn.Module:
    if spec.attention in ("dense", "infllmv2"):
        return SoftmaxAttention(config, spec)
    if spec.attention == "lightning":
        return LightningAttention(config, spec)
    raise NotImplementedError(f"attention kind {spec.attention!r}")
