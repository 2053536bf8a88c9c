"""An EAGLE-style draft head (Li et al. 2024): one decoder layer that predicts the target's next hidden state.

Input at pair position j: the target's final-norm hidden state n_{j} of token x_j (the state that predicts
x_{j+1}) and the embedding of the token x_{j+1} that followed it, concatenated and projected back to the hidden
size by `fc`. One decoder layer (its own small KV cache) turns that into g_{j+1}, a guess of the target's
pre-norm state at x_{j+1}; the target's own final norm and output head give the logits of x_{j+2}. Drafting
feeds g back in as the next feature. Embedding, final norm and output head are the target's (not stored here).

Files beside the target: `<target>.eagle.safetensors` (fc + the decoder layer) and `<target>.eagle.json` (shapes
and training notes); for an artifact folder, `eagle_head.safetensors` / `eagle_head.json` inside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgecpm.config import LayerSpec, ModelConfig
from edgecpm.errors import EdgecpmError
from edgecpm.kv_cache import KVCache
from edgecpm.layers import RotaryEmbedding
from edgecpm.model import DecoderLayer
from edgecpm.speculative.eagle_files import FORMAT, SHAPE_FIELDS, VERSION, head_path, read_description

__all__ = ["EagleHead", "head_path", "head_config", "FORMAT", "VERSION", "SHAPE_FIELDS"]


def head_config(config: ModelConfig) -> ModelConfig:
    """The target's shapes with one plain dense layer (no sparse, lightning or shared-layer structure)."""
    return dataclasses.replace(
        config, num_layers=1, layers=(LayerSpec(),), sparse=None, lightning=None, ode_step=1.0, trained_layers=0
    )


class EagleHead(nn.Module):
    """fc(concat(embed(next token), feature)) -> one decoder layer -> predicted pre-norm feature.

    `attach` hands it the target's embedding, final-norm weight and output head (frozen, shared, not saved).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.target_config = config
        self.config = head_config(config)
        h = config.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.layer = DecoderLayer(self.config, 0)
        self.rotary = RotaryEmbedding(self.config)
        self.embed_weight: torch.Tensor | None = None
        self.norm_weight: torch.Tensor | None = None
        self.head_weight: torch.Tensor | None = None

    def attach(self, embed: torch.Tensor, norm: torch.Tensor, head: torch.Tensor) -> EagleHead:
        v, h = self.target_config.vocab_size, self.target_config.hidden_size
        if tuple(embed.shape) != (v, h) or tuple(head.shape) != (v, h) or tuple(norm.shape) != (h,):
            raise EdgecpmError(
                f"the target's embedding/head {list(embed.shape)}/{list(head.shape)} do not match the head's {v}x{h}"
            )
        self.embed_weight, self.norm_weight, self.head_weight = embed.detach(), norm.detach(), head.detach()
        return self

    @classmethod
    def for_model(cls, model: Any) -> EagleHead:
        """A head sharing the embedding, final norm and output head of an `edgecpm.model.Model`."""
        head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
        return cls(model.config).attach(model.embed_tokens.weight, model.norm.weight, head)

    def new_cache(self) -> KVCache:
        return KVCache(self.config, dtype=self.fc.weight.dtype)

    def target_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The target's final RMSNorm (what its output head reads)."""
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(variance + self.config.rms_norm_eps)).to(x.dtype) * self.norm_weight

    def forward(self, tokens: torch.Tensor, features: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """tokens `[B, T]` (x_{j+1}), features `[B, T, H]` (final-norm states n_j) -> predicted states `[B, T, H]`.

        Features that are the head's own earlier predictions are passed through `target_norm` first.
        """
        if self.embed_weight is None:
            raise EdgecpmError("the EAGLE head has no target attached (embedding, norm, output head)")
        start = cache.length if cache is not None else 0
        t = tokens.shape[1]
        cos, sin = self.rotary.cos_sin(torch.arange(start, start + t), start + t)
        e = F.embedding(tokens, self.embed_weight) * self.config.scale_emb
        x = self.fc(torch.cat([e.to(self.fc.weight.dtype), features.to(self.fc.weight.dtype)], dim=-1))
        layer = self.layer
        x = x + layer.self_attn(layer.input_layernorm(x), cos, sin, cache, 0)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        if cache is not None:
            cache.advance(t)
        return x

    def logits(self, states: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The target's head over the predicted states; `rows`: a sub-matrix of it (FR-Spec), else all of it."""
        weight = self.head_weight if rows is None else rows
        return F.linear(self.target_norm(states) / self.config.logit_scale, weight).float()

    # ---- files ----
    def save(self, json_path: Path, info: dict[str, Any] | None = None) -> Path:
        """Write `<x>.safetensors` beside `json_path`, both under temporary names renamed when complete."""
        from safetensors.torch import save_file

        json_path = Path(json_path)
        weights = json_path.with_suffix(".safetensors")
        cfg = self.target_config
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "weights": weights.name,
            **{f: getattr(cfg, f) for f in SHAPE_FIELDS},
            "target": cfg.name,
            **(info or {}),
        }
        tensors = {k: v.detach().contiguous().float() for k, v in self.state_dict().items()}
        tmp_w = weights.with_name(f".{weights.name}.tmp{os.getpid()}")
        tmp_j = json_path.with_name(f".{json_path.name}.tmp{os.getpid()}")
        try:
            save_file(tensors, str(tmp_w))
            tmp_j.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp_w, weights)
            os.replace(tmp_j, json_path)
        finally:
            tmp_w.unlink(missing_ok=True)
            tmp_j.unlink(missing_ok=True)
        return json_path

    @classmethod
    def load(cls, json_path: Path, config: ModelConfig) -> tuple[EagleHead, dict[str, Any]]:
        """The head stored at `json_path` for a target with `config` (shapes must match)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        json_path = Path(json_path)
        meta = read_description(json_path, config)
        weights = json_path.with_name(str(meta.get("weights", "")))
        try:
            state = load_file(str(weights))
        except (OSError, SafetensorError) as exc:
            raise EdgecpmError(f"cannot read the EAGLE head weights {weights}: {exc}") from None
        head = cls(config)
        missing, unexpected = head.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise EdgecpmError(
                f"the EAGLE head weights {weights.name} lack {missing[:2]} / have extra {unexpected[:2]}"
            )
        head.eval()
        return head, meta
