"""How much each ONNX quantization changes SmolLM2-135M (real weights), next to llama.cpp's quants.

Reference: the torch `Model` in fp32 on the bundled SmolLM2-135M-Instruct GGUF (its dequantized weights are
"the fp32 weights" everyone starts from). Every variant is exported from that same file and run by its own
runtime (onnxruntime for ONNX, llama.cpp for GGUF) on the same windows of real WikiText-2 text. Metrics per
position: KL(p_ref || p_variant) and whether the top-1 token agrees; reported as means.

    python benchmarks/onnx_quality.py [--tokens 1024] [--window 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import edgecpm
from edgecpm.backends.onnx_backend import OnnxBackend
from edgecpm.default_model import default_model_path
from edgecpm.exporters.onnx_exporter import export
from edgecpm.model import Model
from edgecpm.weights import open_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "tests" / "data" / "wikitext2_test_excerpt.txt"

ONNX_VARIANTS = [  # (label, quant, block_size, accuracy_level[, lm_head_bits])
    ("onnx fp32", "fp32", 32, 0),
    ("onnx fp16", "fp16", 32, 0),
    ("onnx int8 (block 32)", "int8", 32, 0),
    ("onnx int8 (block 32, acc 4)", "int8", 32, 4),
    ("onnx int4 (block 32)", "int4", 32, 0),
    ("onnx int4 (block 32, acc 4) [default]", "int4", 32, 4),
    ("onnx int4 (block 128, K=576 padded)", "int4", 128, 0),
    ("onnx int4 (block 128, acc 4)", "int4", 128, 4),
    ("onnx int4 (block 32, acc 4, 4-bit head)", "int4", 32, 4, 4),
]
GGUF_VARIANTS = ["f32", "q8_0", "q4_0"]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_top1(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    lp, lq = log_softmax(ref), log_softmax(got)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return float(kl.mean()), float((ref.argmax(-1) == got.argmax(-1)).mean())


def windows(ids: list[int], n_tokens: int, window: int) -> list[list[int]]:
    ids = ids[:n_tokens]
    return [ids[i : i + window] for i in range(0, len(ids) - window + 1, window)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()
    src = default_model_path()
    lm = edgecpm.load(src)
    ids = lm.tokenizer.encode(TEXT.read_text(encoding="utf-8"))
    wins = windows(ids, args.tokens, args.window)
    config, source = open_checkpoint(src)
    model = Model.from_source(config, source)
    with torch.no_grad():
        ref = np.concatenate([model(torch.as_tensor(w)[None])[0].numpy() for w in wins])
    print(f"SmolLM2-135M ({src.name}), {len(wins)} windows x {args.window} tokens = {len(ref)} positions")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, quant, block, acc, *head in ONNX_VARIANTS:
            out = Path(tmp) / label.replace(" ", "_")
            t0 = time.perf_counter()
            export(
                src,
                out,
                quant,
                progress=False,
                block_size=block,
                accuracy_level=acc,
                lm_head_bits=head[0] if head else None,
            )
            dt = time.perf_counter() - t0
            backend = OnnxBackend(out / "model.onnx", config)
            got = np.concatenate([backend.prefill(w, all_logits=True) for w in wins])
            size = (out / "model.onnx.data").stat().st_size / 2**20
            rows.append((label, *kl_top1(ref, got), size, dt))
            print(rows[-1])
        for quant in GGUF_VARIANTS:
            out = Path(tmp) / f"gguf_{quant}"
            art = edgecpm.export(src, format="gguf", out=out, quant=quant, progress=False)
            gguf = out / art.model_files[0] if hasattr(art, "model_files") else next(out.glob("*.gguf"))
            backend = edgecpm.load(gguf, backend="llama.cpp").backend
            got = np.concatenate([backend.prefill(w, all_logits=True) for w in wins])
            rows.append((f"llama.cpp {quant}", *kl_top1(ref, got), gguf.stat().st_size / 2**20, float("nan")))
            print(rows[-1])
    print("\n| variant | mean KL vs fp32 | top-1 agreement | weights MiB |")
    print("|---|---|---|---|")
    for label, kl, top1, size, _ in rows:
        print(f"| {label} | {kl:.4f} | {top1:.1%} | {size:.0f} |")
    q4 = next(r for r in rows if r[0] == "llama.cpp q4_0")[1]
    for label, kl, *_ in rows:
        if "int4" in label:
            print(f"{label}: KL / llama.cpp q4_0 KL = {kl / q4:.3f}")


if __name__ == "__main__":
    main()
