"""ExecuTorch's own Llama export of the same weights: the peer the ExecuTorch exporter is measured against.

Writes a Meta-format checkpoint (`tok_embeddings`, `layers.N.attention.wq` ...; HF rotary layout kept and
`use_hf_rope` set) plus `params.json` from any edgecpm `WeightSource`, then runs ExecuTorch's official
`python -m executorch.extension.llm.export.export_llm` (XNNPACK, KV cache, its `llama::custom_sdpa` op,
8da4w / 8da8w through its own quantizer, HQQ default). MiniCPM's µP scalings are not part of the Llama
architecture, so for MiniCPM-shaped sources the peer program is only a speed reference (same shapes and
weights, not the same function); for Llama sources (SmolLM2) it is the same function.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from edgecpm.config import ModelConfig

_LAYER_MAP = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}


def write_llama_checkpoint(config: ModelConfig, source, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    sd: dict[str, torch.Tensor] = {}
    for name in source.names():
        t = source.get(name).float()
        if name == "model.embed_tokens.weight":
            sd["tok_embeddings.weight"] = t
        elif name == "model.norm.weight":
            sd["norm.weight"] = t
        elif name == "lm_head.weight":
            sd["output.weight"] = t
        elif name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            mod, _, leaf = rest.rpartition(".")
            sd[f"layers.{i}.{_LAYER_MAP[mod]}.{leaf}"] = t
    if "output.weight" not in sd:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    ckpt = out / "llama.pth"
    torch.save(sd, ckpt)
    params = {
        "dim": config.hidden_size,
        "hidden_dim": config.intermediate_size,
        "n_heads": config.num_heads,
        "n_kv_heads": config.num_kv_heads,
        "n_layers": config.num_layers,
        "norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "vocab_size": config.vocab_size,
        "use_hf_rope": True,
        "use_scaled_rope": False,
        "head_dim": config.head_dim,
    }
    params_path = out / "params.json"
    params_path.write_text(json.dumps(params))
    return ckpt, params_path


def export_peer(
    ckpt: Path,
    params: Path,
    out_pte: Path,
    qmode: str | None,
    group_size: int,
    max_seq_len: int,
    max_context_len: int,
    bos: int,
    eos: list[int],
) -> Path:
    """ExecuTorch's official LLM export CLI (export_llama's Hydra front end)."""
    meta = json.dumps({"get_bos_id": bos, "get_eos_ids": eos})
    cmd = [
        sys.executable,
        "-m",
        "executorch.extension.llm.export.export_llm",
        "base.model_class=llama3",
        f"base.params={params}",
        f"base.checkpoint={ckpt}",
        f"base.metadata='{meta}'",
        "model.use_kv_cache=True",
        "model.use_sdpa_with_kv_cache=True",
        "model.enable_dynamic_shape=True",
        f"export.max_seq_length={max_seq_len}",
        f"export.max_context_length={max_context_len}",
        "backend.xnnpack.enabled=True",
        "backend.xnnpack.extended_ops=True",
        f"export.output_dir={out_pte.parent}",
        f"export.output_name={out_pte.name}",
    ]
    if qmode:
        cmd += [f"quantization.qmode={qmode}", f"quantization.group_size={group_size}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=out_pte.parent)
    return out_pte
