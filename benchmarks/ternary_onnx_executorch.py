"""Ternary (BitCPM-style) model in ONNX and ExecuTorch: bits per linear weight, file size, logit error against
the float reference, and decode speed of ONNX tq2 (2-bit MatMulNBits) vs int4, and ExecuTorch 8da4w (exact
ternary int4 codes) vs fp32.

Same synthetic checkpoint as `benchmarks/ternary_formats.py` (per-32 absmean scales; hidden 1024, FFN 3072,
4 layers). Decode timed per format over `--decode` steps, formats interleaved per round, median of the rounds.

    python benchmarks/ternary_onnx_executorch.py [--rounds 3] [--threads 1] [--hidden 1024] [--layers 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import edgecpm
from edgecpm.exporters.registry import run_export
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def onnx_linear_bits(art: Path, n_weights: int) -> float:
    """Bits per decoder linear weight: the bytes of every MatMulNBits / MatMul initializer but the LM head."""
    model = onnx.load(str(art / "model.onnx"), load_external_data=False)
    sizes = {}
    for t in model.graph.initializer:
        length = next((int(e.value) for e in t.external_data if e.key == "length"), len(t.raw_data))
        sizes[t.name] = length
    total = 0
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "MatMul") and "layers." in node.name:
            total += sum(sizes.get(i, 0) for i in node.input[1:])
    return 8 * total / n_weights


def decode_seconds(lm, prompt: list[int], n: int) -> float:
    be = lm.backend
    logits = be.prefill(prompt)
    token = int(np.argmax(logits))
    t = time.perf_counter()
    for _ in range(n):
        token = int(np.argmax(be.decode([token])[-1]))
    return (time.perf_counter() - t) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--decode", type=int, default=32)
    args = p.parse_args()
    spec = SyntheticSpec(
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_layers=args.layers,
        num_heads=args.hidden // 64,
        num_kv_heads=2,
        dim_model_base=256,
        ternary=True,
        seed=5,
    )
    src = cached_checkpoint(spec)
    ref = edgecpm.load(src, ternary="off")
    cfg = ref.config
    h, f = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_kv_heads * cfg.head_dim
    n_weights = cfg.num_layers * (h * h * 2 + 2 * h * kv + 3 * h * f)
    ids = [int(x) for x in np.random.default_rng(0).integers(3, 600, 32)]
    want = ref.logits(ids)
    runs = [("onnx", "int4", {}), ("onnx", "tq2", {}), ("executorch", "fp32", {}), ("executorch", "8da4w", {})]
    with tempfile.TemporaryDirectory() as tmp:
        lms, rows = {}, []
        for fmt, quant, opts in runs:
            out = Path(tmp) / f"{fmt}-{quant}"
            if fmt == "executorch":
                opts = dict(opts, max_seq_len=32, max_context_len=128)
            run_export(src, fmt, out, quant=quant, progress=False, **opts)
            lm = edgecpm.load(out, threads=args.threads)
            got = np.stack(
                [lm.backend.prefill(ids[:16], all_logits=True)[i] for i in range(16)]
                if fmt == "onnx"
                else [lm.backend.prefill(ids[: i + 1]) for i in range(16)]
            )
            err = float(np.abs(got - want[:16]).max())
            top1 = float((got.argmax(-1) == want[:16].argmax(-1)).mean())
            size = sum(q.stat().st_size for q in out.iterdir() if q.name.startswith("model."))
            bits = onnx_linear_bits(out, n_weights) if fmt == "onnx" else None
            lms[(fmt, quant)] = lm
            rows.append([fmt, quant, size, bits, err, top1])
        prompt = ids[:16]
        times = {k: [] for k in lms}
        for _ in range(args.rounds):
            for k, lm in lms.items():
                times[k].append(decode_seconds(lm, prompt, args.decode))
    print(f"params in decoder linears: {n_weights / 1e6:.1f} M; logits up to {np.abs(want).max():.1f}")
    print("| format | quant | model file(s) | bits / linear weight | max abs logit error | top-1 | decode tok/s |")
    print("|---|---|---|---|---|---|---|")
    for (fmt, quant, size, bits, err, top1), k in zip(rows, lms):
        tps = 1.0 / float(np.median(times[k]))
        b = f"{bits:.2f}" if bits is not None else "-"
        print(f"| {fmt} | {quant} | {size / 1e6:.2f} MB | {b} | {err:.3g} | {top1:.0%} | {tps:.1f} |")


if __name__ == "__main__":
    main()
