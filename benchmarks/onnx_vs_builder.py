"""Decode speed: edgecpm's int4 ONNX export vs ONNX Runtime GenAI's own model builder, same model, same runtime.

Model: a random MiniCPM4-0.5B-shaped checkpoint (24 layers, hidden 1024, 16/2 heads, vocab 73448, tied; plain
RoPE, since the builder has no LongRoPE for this family and rotary tables do not change speed). The builder has
no MiniCPM class either, so it gets the same safetensors under a Granite config, whose four multipliers are
MiniCPM's µP scalings exactly (onnxruntime-genai `builders/granite.py`). Both artifacts run in onnxruntime-genai
with the same prompt, `max_length` and thread count; runs alternate and the median is reported.

    python benchmarks/onnx_vs_builder.py [--runs 5] [--new-tokens 64]

Needs `transformers` (the builder loads the HF model with it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecpm.exporters.onnx_exporter import export
from edgecpm.synthetic import MINICPM4_05B_SHAPE, SyntheticSpec, cached_checkpoint

SPEC = SyntheticSpec(
    **MINICPM4_05B_SHAPE,
    longrope=False,
    init_std=0.02,
    embed_std=0.02,
)


def granite_dir(ckpt: Path, out: Path, tokenizer_from: Path) -> Path:
    """The checkpoint's tensors under a GraniteForCausalLM config carrying MiniCPM's multipliers."""
    cfg = json.loads((ckpt / "config.json").read_text())
    out.mkdir(parents=True)
    for f in ckpt.glob("*.safetensors*"):
        os.symlink(f, out / f.name)
    n, h = cfg["num_hidden_layers"], cfg["hidden_size"]
    head_dim = h // cfg["num_attention_heads"]
    granite = {
        "architectures": ["GraniteForCausalLM"],
        "model_type": "granite",
        "hidden_size": h,
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": n,
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "vocab_size": cfg["vocab_size"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_theta": cfg.get("rope_theta", 10000.0),
        "hidden_act": "silu",
        "tie_word_embeddings": cfg.get("tie_word_embeddings", True),
        "embedding_multiplier": cfg["scale_emb"],
        "residual_multiplier": cfg["scale_depth"] / math.sqrt(n),
        "logits_scaling": h / cfg["dim_model_base"],
        "attention_multiplier": 1.0 / math.sqrt(head_dim),
        "bos_token_id": cfg.get("bos_token_id", 1),
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        "attention_bias": False,
        "mlp_bias": False,
    }
    (out / "config.json").write_text(json.dumps(granite, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, out / name)
    return out


def build_with_builder(src: Path, out: Path) -> None:
    """The builder's own command line (`-p int4 -e cpu`: block 32, symmetric, accuracy_level 4)."""
    cache = out.with_name(out.name + "_cache")
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(src),
        "-o",
        str(out),
        "-p",
        "int4",
        "-e",
        "cpu",
        "-c",
        str(cache),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def decode_rate(folder: Path, prompt: list[int], new_tokens: int, threads: int | None) -> tuple[float, float]:
    """(decode tokens/s after the first token, prefill+first-token seconds) in onnxruntime-genai."""
    import onnxruntime_genai as og

    cfg_path = folder / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["search"]["max_length"] = len(prompt) + new_tokens
    opts = cfg["model"]["decoder"]["session_options"]
    if threads:
        opts["intra_op_num_threads"] = threads
    cfg_path.write_text(json.dumps(cfg, indent=2))
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens, min_length=len(prompt) + new_tokens, do_sample=False)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(np.asarray(prompt, dtype=np.int32))
    gen.generate_next_token()
    t1 = time.perf_counter()
    n = 0
    while not gen.is_done():
        gen.generate_next_token()
        n += 1
    t2 = time.perf_counter()
    return n / (t2 - t1), t1 - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    ckpt = cached_checkpoint(SPEC)
    prompt = list(np.random.default_rng(0).integers(100, 70000, args.prompt_tokens))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        arts = {}
        t0 = time.perf_counter()
        export(ckpt, tmp / "edgecpm_int4", "int4", progress=False)
        print(f"edgecpm int4 export: {time.perf_counter() - t0:.1f} s")
        arts["edgecpm int4 (int8 head, default)"] = tmp / "edgecpm_int4"
        export(ckpt, tmp / "edgecpm_int4_h4", "int4", progress=False, lm_head_bits=4)
        arts["edgecpm int4 (int4 head)"] = tmp / "edgecpm_int4_h4"
        t0 = time.perf_counter()
        build_with_builder(granite_dir(ckpt, tmp / "granite", tmp / "edgecpm_int4"), tmp / "builder_int4")
        print(f"builder int4 build: {time.perf_counter() - t0:.1f} s")
        arts["ORT GenAI builder int4"] = tmp / "builder_int4"
        for name, folder in arts.items():
            size = sum(f.stat().st_size for f in folder.glob("model.onnx*")) / 2**20
            print(f"{name}: {size:.0f} MiB on disk")
        rates: dict[str, list[float]] = {k: [] for k in arts}
        firsts: dict[str, list[float]] = {k: [] for k in arts}
        decode_rate(arts["ORT GenAI builder int4"], prompt, 8, args.threads)  # warm the page cache
        load_before = os.getloadavg()  # the host may be shared: report how busy it was
        for _ in range(args.runs):
            for name, folder in arts.items():
                r, f = decode_rate(folder, prompt, args.new_tokens, args.threads)
                rates[name].append(r)
                firsts[name].append(f)
        load_after = os.getloadavg()
        base = statistics.median(rates["ORT GenAI builder int4"])
        print(
            f"\n{args.runs} alternating runs, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, "
            f"threads={args.threads or 'default'}, load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
        )
        print("| artifact | decode tok/s (median) | prefill+first token ms | ratio vs builder |")
        print("|---|---|---|---|")
        for name in arts:
            med = statistics.median(rates[name])
            print(f"| {name} | {med:.1f} | {1000 * statistics.median(firsts[name]):.0f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
