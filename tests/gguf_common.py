"""Helpers for the GGUF tests: reference logits (torch `Model`), llama.cpp logits, real-text token ids, and a
ternary checkpoint with one scale per weight row (what TQ1_0/TQ2_0 store losslessly)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from edgecpm.backends.llamacpp_loader import open_llama
from edgecpm.model import Model
from edgecpm.synthetic import SyntheticSpec, cache_root, cached_checkpoint
from edgecpm.tokenizer import load_tokenizer_dir
from edgecpm.weights import open_checkpoint

DATA = Path(__file__).parent / "data"
# 256-wide so every matrix row is a whole number of 256-value TQ / K-quant blocks
WIDE = SyntheticSpec(
    hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2, dim_model_base=64, seed=3
)


def reference_logits(src: Path, ids: list[int]) -> np.ndarray:
    config, source = open_checkpoint(src)
    model = Model.from_source(config, source, torch.float32)
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0].numpy()


def llamacpp_logits(gguf_path: Path, ids: list[int], n_ctx: int | None = None) -> np.ndarray:

    n = n_ctx or max(64, len(ids))
    llm = open_llama(str(gguf_path), n_ctx=n, n_batch=n, n_ubatch=n, logits_all=True, n_threads=1, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def text_ids(checkpoint: Path, n: int) -> list[int]:
    config, _ = open_checkpoint(checkpoint)
    tok = load_tokenizer_dir(checkpoint, bos_id=config.bos_token_id, eos_ids=config.eos_token_ids)
    ids = tok.encode((DATA / "wikitext2_test_excerpt.txt").read_text(encoding="utf-8")[: 20 * n])
    assert len(ids) >= n
    return ids[:n]


def top1(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def row_ternary_checkpoint(spec: SyntheticSpec = WIDE) -> Path:
    """A copy of `spec`'s checkpoint whose linear weights are s_row * {-1, 0, +1} (BitNet absmean per row)."""
    from safetensors.torch import load_file, save_file

    base = cached_checkpoint(spec)
    target = cache_root() / f"{base.name}-rowternary"
    if (target / "config.json").exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    for shard in sorted(tmp.glob("*.safetensors")):
        tensors = load_file(str(shard))
        for name, w in tensors.items():
            if w.dim() == 2 and "embed_tokens" not in name and "lm_head" not in name:
                wf = w.float()
                s = wf.abs().mean(dim=1, keepdim=True).clamp_min(1e-6).to(w.dtype).float()
                tensors[name] = (torch.clamp(torch.round(wf / s), -1, 1) * s).to(w.dtype)
        save_file(tensors, str(shard), metadata={"format": "pt"})
    cfg = json.loads((tmp / "config.json").read_text())
    cfg["ternary_weights"] = True
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    try:
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
