"""The one torch reference implementation of the MiniCPM4 family.

    h0     = Embed(ids) * scale_emb
    h     += Attn(RMSNorm(h)) * scale_depth / sqrt(L)          (per layer; times the ODE step of shared stacks)
    h     += MLP(RMSNorm(h))  * scale_depth / sqrt(L)           MLP = down(silu(gate(x)) * up(x))
    logits = lm_head(RMSNorm(h) / (hidden_size / dim_model_base))

Layers are built from `ModelConfig.layers`, so sparse (InfLLM v2), lightning and weight-shared layers plug in
as data. Attention math is delegated to `edgecpm.runtime_kernels`, so a kernel swap never touches this file.
Every backend and exporter is tested against this model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgecpm import attention_layers
from edgecpm.config import ModelConfig
from edgecpm.errors import EdgecpmError, WeightError
from edgecpm.kv_cache import KVCache
from edgecpm.layers import MLP, RMSNorm, RotaryEmbedding
from edgecpm.weights.base import WeightSource


class DecoderLayer(nn.Module):
    """One physical layer's weights; a shared layer's module is called at several depths."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        # the first logical layer stored at `layer_index` (ODE-stepped configs have fewer logical layers)
        spec = next(s for s in config.layers if s.weight_layer == layer_index)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = attention_layers.build(config, spec)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)


class Model(nn.Module):
    """MiniCPM4-family causal LM. `forward(ids, cache)` -> fp32 logits `[B, T, V]`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        physical = sorted({s.weight_layer for s in config.layers})
        self.layers = nn.ModuleDict({str(i): DecoderLayer(config, i) for i in physical})
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = (
            None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.rotary = RotaryEmbedding(config)

    # ---- construction ----
    @classmethod
    def from_source(
        cls,
        config: ModelConfig,
        source: WeightSource,
        dtype: torch.dtype = torch.float32,
        progress: Callable[[int], None] | None = None,
    ) -> Model:
        """Build on the meta device, allocate once, then copy tensors in one at a time (no second copy)."""
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device="cpu").to(dtype)
        model.rotary = RotaryEmbedding(config)
        params = dict(model.named_parameters())
        for name, param in params.items():
            hf_name = model.hf_name(name)
            if hf_name not in source:
                raise WeightError(f"tensor {hf_name!r} is missing from the checkpoint")
            src_shape = tuple(source.shape(hf_name))
            if src_shape != tuple(param.shape):
                raise WeightError(
                    f"tensor {hf_name!r} has shape {list(src_shape)}; the config implies {list(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(source.get(hf_name))
            if progress is not None:
                progress(1)
        model.eval()
        return model

    def restepped(self, steps: int) -> Model:
        """The same weights (the same modules, no copy) integrated in `steps` ODE steps: a shared-layer model's
        cheaper self-draft. Its final norm is a module of its own over the shared weight, so hooks a backend
        puts on one model's norm do not fire for the other."""
        config = self.config.with_ode_steps(steps)
        new = Model.__new__(Model)
        nn.Module.__init__(new)
        new.config = config
        new.embed_tokens, new.layers, new.lm_head = self.embed_tokens, self.layers, self.lm_head
        new.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        new.norm.weight = self.norm.weight
        new.rotary = self.rotary
        return new.eval()

    @staticmethod
    def hf_name(param_name: str) -> str:
        """Module parameter name -> canonical checkpoint tensor name."""
        if param_name.startswith("layers."):
            return "model." + param_name
        if param_name.startswith(("embed_tokens.", "norm.")):
            return "model." + param_name
        return param_name

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def new_cache(self, mode: str = "dynamic", max_len: int | None = None, batch: int = 1) -> KVCache:
        return KVCache(self.config, mode=mode, max_len=max_len, batch=batch, dtype=self.dtype)

    # ---- forward ----
    def hidden_states(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        cfg = self.config
        if ids.dim() == 1:
            ids = ids[None]
        start = cache.length if cache is not None else 0
        t = ids.shape[1]
        positions = torch.arange(start, start + t)
        cos, sin = self.rotary.cos_sin(positions, start + t)
        h = self.embed_tokens(ids) * cfg.scale_emb
        for index, spec in enumerate(cfg.layers):
            layer = self.layers[str(spec.weight_layer)]
            residual_scale = cfg.layer_residual_scale(index)
            attn = layer.self_attn(layer.input_layernorm(h), cos, sin, cache, index)
            h = h + attn * residual_scale
            h = h + layer.mlp(layer.post_attention_layernorm(h)) * residual_scale
        if cache is not None:
            cache.advance(t)
        return self.norm(h)

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        h = self.hidden_states(ids, cache) / self.config.logit_scale
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight).float()

    def tree_logits(self, ids: torch.Tensor, parents: Sequence[int], cache: KVCache) -> torch.Tensor:
        """Logits `[1, N, V]` of a token tree appended to `cache`: node i (`parents[i]` an earlier node, or -1
        for a child of the cached prefix) sees the prefix and its ancestors, at position length + depth(i).
        The cache then holds every node (`KVCache.keep` compacts it to one path). Softmax layers only."""
        cfg = self.config
        if any(s.attention not in ("dense", "infllmv2") for s in cfg.layers):
            raise EdgecpmError("token trees need softmax attention in every layer (lightning layers are recurrent)")
        ids = ids if ids.dim() == 2 else ids[None]
        depth, ancestors = tree_structure(parents)
        if ids.shape != (1, len(depth)):
            raise EdgecpmError(f"a tree of {len(depth)} nodes needs ids [1, {len(depth)}]; got {list(ids.shape)}")
        start, t = cache.length, len(depth)
        mask = torch.cat([torch.ones(t, start, dtype=torch.bool), ancestors], dim=1)
        cos, sin = self.rotary.cos_sin(start + depth, start + int(depth.max()) + 1)
        h = self.embed_tokens(ids) * cfg.scale_emb
        for index, spec in enumerate(cfg.layers):
            layer = self.layers[str(spec.weight_layer)]
            residual_scale = cfg.layer_residual_scale(index)
            attn = layer.self_attn(layer.input_layernorm(h), cos, sin, cache, index, tree_mask=mask)
            h = h + attn * residual_scale
            h = h + layer.mlp(layer.post_attention_layernorm(h)) * residual_scale
        cache.advance(t)
        h = self.norm(h) / cfg.logit_scale
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight).float()

    def last_logits(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits of the last position only (skips the vocab projection of the rest of a prefill)."""
        h = self.hidden_states(ids, cache)[:, -1:] / self.config.logit_scale
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight).float()[:, -1]


def tree_structure(parents: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(depth `[N]` long, ancestors `[N, N]` bool: node i sees node j, itself included) of a parent list."""
    n = len(parents)
    if n == 0:
        raise EdgecpmError("a token tree needs at least one node")
    depth = torch.zeros(n, dtype=torch.long)
    ancestors = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        p = int(p)
        if not -1 <= p < i:
            raise EdgecpmError(f"token tree node {i} has parent {p}; expected an earlier node or -1")
        if p >= 0:
            depth[i] = depth[p] + 1
            ancestors[i] |= ancestors[p]
    return depth, ancestors
