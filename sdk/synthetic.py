"""Random checkpoints in the exact published MiniCPM4 layout, for tests and benchmarks.

Nothing can be downloaded from a model hub here, so tests generate their models: sharded bf16 safetensors with
`model.safetensors.index.json`, a `config.json` shaped like the published MiniCPM4 one (LongRoPE factors, µP
fields, `eos_token_id` as a list, optional `sparse_config`), tied or untied head, and a SentencePiece
`tokenizer.model` trained on bundled WikiText text with MiniCPM4's special tokens placed at the end of the
vocabulary as in the real 73448-entry vocabulary. Variants: BitCPM-style ternary weights, shared layers and
MiniCPM-SALA hybrids.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MINICPM4_SPECIAL_TOKENS = [
    "<|im_end|>",
    "<|im_start|>",
    "<|tool_call|>",
    "<|execute_start|>",
    "<|execute_end|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
]
_GENERATOR_VERSION = "3"
# the published MiniCPM4-0.5B shapes (openbmb/MiniCPM4-0.5B config.json), for full-size benchmarks
MINICPM4_05B_SHAPE: dict[str, int] = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_layers=24,
    num_heads=16,
    num_kv_heads=2,
    vocab_size=73448,
    dim_model_base=256,
)
_CORPUS = Path(__file__).with_name("data") / "wikitext2_excerpt.txt"


@dataclass(frozen=True)
class SyntheticSpec:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vocab_size: int | None = None  # None: tokenizer pieces + the 8 special tokens
    tokenizer_pieces: int = 600
    tied: bool = True
    longrope: bool = True
    max_position_embeddings: int = 32768
    scale_emb: float = 12.0
    scale_depth: float = 1.4
    dim_model_base: int = 16
    rope_theta: float = 10000.0
    sparse_config: dict[str, Any] | None = None
    ternary: bool = False  # BitCPM-style: every linear weight is scale * {-1, 0, +1} per group of 32
    shared_unique_layers: int | None = None
    ode_step: float | None = None
    sala_mixers: tuple[str, ...] | None = None  # e.g. ("minicpm4", "lightning-attn")
    shards: int = 2
    dtype: str = "bfloat16"
    init_std: float = 0.1
    embed_std: float = 1.0
    seed: int = 0
    extra_config: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True) + _GENERATOR_VERSION
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("EDGECPM_TEST_CACHE", Path.home() / ".cache" / "edgecpm" / "checkpoints"))


def cached_checkpoint(spec: SyntheticSpec) -> Path:
    """The checkpoint for `spec`, generated once and reused across test runs."""
    target = cache_root() / spec.key()
    if (target / "config.json").exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_random_checkpoint(tmp, spec)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------------------


def train_tokenizer(pieces: int) -> bytes:
    """A SentencePiece BPE model with byte fallback (MiniCPM4's kind), trained on the bundled text."""
    import sentencepiece as spm

    cache = cache_root() / f"spm-{pieces}-{_GENERATOR_VERSION}.model"
    if cache.exists():
        return cache.read_bytes()
    lines = [ln for ln in _CORPUS.read_text(encoding="utf-8").splitlines() if ln.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=pieces,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
        num_threads=1,
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, cache)
    return buf.getvalue()


def _longrope_factors(n: int, rng: np.random.Generator) -> list[float]:
    # same shape as the published lists: ~1.0 for fast pairs rising to ~50 for the slowest
    base = np.geomspace(1.0004360675811768, 49.85338592529297, n)
    return [float(x) for x in base * rng.uniform(0.98, 1.02, n)]


def config_dict(spec: SyntheticSpec, vocab_size: int) -> dict[str, Any]:
    head_dim = spec.hidden_size // spec.num_heads
    im_end = vocab_size - len(MINICPM4_SPECIAL_TOKENS)
    rng = np.random.default_rng(spec.seed + 1)
    arch = "MiniCPMSALAForCausalLM" if spec.sala_mixers else "MiniCPMForCausalLM"
    cfg: dict[str, Any] = {
        "_name_or_path": "edgecpm/synthetic-minicpm4",
        "architectures": [arch],
        "auto_map": {
            "AutoConfig": "configuration_minicpm.MiniCPMConfig",
            "AutoModel": "modeling_minicpm.MiniCPMModel",
            "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM",
        },
        "bos_token_id": 1,
        "eos_token_id": [2, im_end],
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": spec.init_std,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
        "rms_norm_eps": 1e-05,
        "scale_emb": spec.scale_emb,
        "scale_depth": spec.scale_depth,
        "dim_model_base": spec.dim_model_base,
        "torch_dtype": spec.dtype,
        "transformers_version": "4.46.3",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if spec.rope_theta != 10000.0:
        cfg["rope_theta"] = spec.rope_theta
    if spec.longrope:
        factors = _longrope_factors(head_dim // 2, rng)
        cfg["rope_scaling"] = {
            "rope_type": "longrope",
            "long_factor": factors,
            "short_factor": factors,
            "original_max_position_embeddings": spec.max_position_embeddings,
        }
    if not spec.tied:
        cfg["tie_word_embeddings"] = False
    if spec.sparse_config is not None:
        cfg["sparse_config"] = dict(spec.sparse_config)
    if spec.shared_unique_layers is not None:
        cfg["shared_layers"] = {"num_unique_layers": spec.shared_unique_layers, "ode_step": spec.ode_step or 1.0}
    if spec.sala_mixers:
        mixers = [spec.sala_mixers[i % len(spec.sala_mixers)] for i in range(spec.num_layers)]
        cfg.update(
            {
                "model_type": "minicpm_sala",
                "mixer_types": mixers,
                "lightning_nh": spec.num_heads,
                "lightning_nkv": spec.num_heads,
                "lightning_head_dim": head_dim,
                "lightning_scale": "1/sqrt(d)",
                "attn_use_rope": False,
                "lightning_use_rope": True,
                "qk_norm": True,
                "use_output_gate": True,
                "use_output_norm": True,
                "attn_use_output_gate": True,
                "tie_word_embeddings": False,
            }
        )
    cfg.update(spec.extra_config)
    return cfg


def _ternarize(w: np.ndarray, group: int = 32) -> np.ndarray:
    """BitCPM-CANN rule: per-group absmean scale s, W = clamp(round(W/s), -1, 1) * s."""
    rows, cols = w.shape
    g = w.reshape(rows, cols // group, group)
    s = np.maximum(np.abs(g).mean(axis=-1, keepdims=True), 1e-8)
    return (np.clip(np.round(g / s), -1, 1) * s).reshape(rows, cols)


def write_random_checkpoint(directory: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write a complete HF-layout checkpoint (config, sharded safetensors, tokenizer) to `directory`."""
    import torch
    from safetensors.torch import save_file

    from edgecpm.config import config_from_hf_dict
    from edgecpm.weights.safetensors_source import expected_shapes

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sp_model = train_tokenizer(spec.tokenizer_pieces)
    vocab_size = spec.vocab_size or spec.tokenizer_pieces + len(MINICPM4_SPECIAL_TOKENS)
    cfg = config_dict(spec, vocab_size)
    config = config_from_hf_dict(cfg)
    rng = np.random.default_rng(spec.seed)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[spec.dtype]

    tensors: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(config).items():
        if len(shape) == 1:
            arr = rng.normal(1.0, 0.1, shape)
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            arr = rng.normal(0.0, spec.embed_std, shape)
        else:
            arr = rng.normal(0.0, spec.init_std, shape)
            if spec.ternary and shape[1] % 32 == 0:
                arr = _ternarize(arr)
        tensors[name] = torch.from_numpy(arr.astype(np.float32)).to(dtype)

    names = list(tensors)
    shards = max(1, min(spec.shards, len(names)))
    per = math.ceil(len(names) / shards)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(shards):
        chunk = names[s * per : (s + 1) * per]
        if not chunk:
            continue
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors" if shards > 1 else "model.safetensors"
        save_file({n: tensors[n].contiguous() for n in chunk}, str(out / fname), metadata={"format": "pt"})
        for n in chunk:
            weight_map[n] = fname
            total += tensors[n].numel() * tensors[n].element_size()
    if shards > 1:
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    _write_tokenizer_files(out, sp_model, vocab_size)
    return out


def _write_tokenizer_files(out: Path, sp_model: bytes, vocab_size: int) -> None:
    (out / "tokenizer.model").write_bytes(sp_model)
    first_special = vocab_size - len(MINICPM4_SPECIAL_TOKENS)
    added = {tok: first_special + i for i, tok in enumerate(MINICPM4_SPECIAL_TOKENS)}
    decoder = {
        "0": {"content": "<unk>", "special": True},
        "1": {"content": "<s>", "special": True},
        "2": {"content": "</s>", "special": True},
    }
    for tok, i in added.items():
        decoder[str(i)] = {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    chatml = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{% endif %}"
    )
    tok_cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "pad_token": None,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": MINICPM4_SPECIAL_TOKENS,
        "chat_template": chatml,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 1 << 60,
        "tokenizer_class": "LlamaTokenizer",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    (out / "added_tokens.json").write_text(json.dumps(added, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "<|im_end|>",
                "unk_token": "<unk>",
                "additional_special_tokens": MINICPM4_SPECIAL_TOKENS,
            },
            indent=2,
        )
    )
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": 1,
                "eos_token_id": [2, first_special],
                "pad_token_id": 2,
                "do_sample": True,
                "temperature": 0.8,
                "top_p": 0.8,
            },
            indent=2,
        )
    )
