"""`edgecpm inspect PATH`: architecture, parameter count, dtypes, size on disk, KV bytes per token, and per
export format what the model would lose in it (from the format table, `exporters/formats.py`)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from edgecpm.config import ModelConfig, is_preset, preset_config
from edgecpm.default_model import resolve_model_path
from edgecpm.errors import EdgecpmError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="describe a checkpoint, GGUF file, artifact or preset")
    p.add_argument("path", nargs="?", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def describe(path: str | None) -> dict[str, Any]:
    """Facts about a model without loading its weights."""
    from edgecpm.exporters.formats import format_report
    from edgecpm.exporters.manifest import is_artifact, read_manifest
    from edgecpm.weights import open_checkpoint

    ternary: dict[str, Any] | None = None
    if path is not None and is_preset(path) and not Path(path).exists():
        config, dtypes, files, kind, quant = preset_config(path), {}, [], "preset", None
    else:
        p = resolve_model_path(path)
        if not p.exists():
            raise EdgecpmError(f"model path not found: {p}")
        if p.is_dir() and is_artifact(p):
            m = read_manifest(p)
            config, kind, quant = m.model_config, f"artifact ({m.format})", m.quant
            files = [p / f for f in p.iterdir()] if p.is_dir() else [p]
            dtypes = {}
        else:
            config, source = open_checkpoint(p)
            kind = "gguf" if p.suffix == ".gguf" else "hf checkpoint"
            quant = source.file_type_name() if kind == "gguf" else None
            if kind == "gguf":
                dtypes = dict(Counter(source.quant_type(n) for n in source.names()))
                files = [p]
            else:
                dtypes = dict(Counter(str(source.dtype(n)).replace("torch.", "") for n in source.names()))
                files = list(source.files)
            ternary = ternary_summary(source)
    size = sum(f.stat().st_size for f in files if f.is_file())
    return {
        "kind": kind,
        "architecture": config.architecture,
        "name": config.name,
        "parameters": config.parameter_count(),
        "layers": config.num_layers,
        "attention": dict(Counter(s.attention for s in config.layers)),
        "shared_layers": config.num_layers - config.num_weight_layers,
        "hidden_size": config.hidden_size,
        "heads": config.num_heads,
        "kv_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "tied_embeddings": config.tie_word_embeddings,
        "longrope": config.rope_scaling is not None,
        "sparse_config": None if config.sparse is None else config.sparse.__dict__,
        "quant": quant,
        "tensor_dtypes": dtypes,
        "size_on_disk_bytes": size,
        "kv_bytes_per_token_bf16": int(config.kv_bytes_per_token(2)),
        "kv_bytes_per_token_f32": int(config.kv_bytes_per_token(4)),
        "scalings": {
            "scale_emb": config.scale_emb,
            "residual_scale": round(config.residual_scale, 6),
            "logit_divisor": config.logit_scale,
        },
        "export_losses": format_report(config),
        **({"ternary": ternary} if ternary else {}),
    }


def ternary_summary(source: Any) -> dict[str, Any] | None:
    """Ternary tensors found from their values (BitCPM4 is stored fake-quantized), their scale layout and bits
    per weight packed. Only scanned when the first layer's q_proj is ternary (a full scan reads every tensor)."""
    from edgecpm.weights.ternary import detect_ternary, scan

    probe = "model.layers.0.self_attn.q_proj.weight"
    if probe not in source or detect_ternary(source.get(probe)) is None:
        return None
    found = scan(source)
    elements = {n: source.shape(n)[0] * source.shape(n)[1] for n in found}
    total = sum(elements.values())

    def bpw(trits: int) -> float:
        return round(sum(found[n].bits_per_weight(trits) * elements[n] for n in found) / total, 3)

    return {
        "tensors": len(found),
        "granularity": dict(Counter(i.granularity for i in found.values())),
        "bits_per_weight_2bit": bpw(4),
        "bits_per_weight_1.6bit": bpw(5),
        "zero_fraction": round(sum(found[n].zero_fraction * elements[n] for n in found) / total, 4),
        "names": sorted(found),
    }


def run(args: argparse.Namespace) -> int:
    info = describe(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "ternary":
            value = (
                f"{value['tensors']} tensors, scales {value['granularity']}, packed "
                f"{value['bits_per_weight_2bit']} bits/weight (2-bit) or {value['bits_per_weight_1.6bit']} "
                f"(1.6-bit), {value['zero_fraction']:.0%} zeros"
            )
        if key == "export_losses":  # one line per format: what the model would lose in it
            for fmt, lost in value.items():
                print(f"{'export ' + fmt:<{width}}  {'; '.join(lost) or 'nothing lost'}")
            continue
        if key in ("size_on_disk_bytes",):
            value = f"{value / 1e6:.1f} MB"
        elif key == "parameters":
            value = f"{value:,}"
        print(f"{key:<{width}}  {value}")
    return 0


def config_summary(config: ModelConfig) -> str:
    return f"{config.architecture} L{config.num_layers} H{config.hidden_size} V{config.vocab_size}"
