"""Ternary (BitCPM-style) model in llama.cpp: file size, bits per weight and decode speed of TQ1_0 / TQ2_0 vs
q4_0 of the same weights.

A synthetic ternary checkpoint with per-32 absmean scales (the BitCPM-CANN rule) is exported with
`ternary_regroup=true` (one scale per 256 values; the stated re-grouping error is printed) to tq1_0 and tq2_0,
and to q4_0. Decode is timed in llama.cpp (one thread by default), formats interleaved per round, median of
the rounds. Usage:

    python benchmarks/ternary_formats.py [--rounds 5] [--threads 1] [--hidden 1024] [--layers 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import edgecpm
from edgecpm.backends.llamacpp_loader import open_llama
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint


def decode_seconds(llm, prompt: list[int], n: int) -> float:
    llm.reset()
    llm.eval(prompt)
    token = int(np.argmax(llm.scores[len(prompt) - 1]))
    t = time.perf_counter()
    for _ in range(n):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return (time.perf_counter() - t) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
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
    config = edgecpm.load(src, ternary="off").config
    prompt = [int(x) for x in np.random.default_rng(0).integers(3, 600, 16)]
    with tempfile.TemporaryDirectory() as tmp:
        arts, llms = {}, {}
        for quant in ("tq1_0", "tq2_0", "q4_0"):
            kw = {"ternary_regroup": True} if quant.startswith("tq") else {}
            arts[quant] = edgecpm.export(src, format="gguf", out=Path(tmp) / quant, quant=quant, progress=False, **kw)
            llms[quant] = open_llama(str(arts[quant].model_file), n_ctx=128, n_threads=args.threads, logits_all=True)
        times: dict[str, list[float]] = {q: [] for q in llms}
        for _ in range(args.rounds):
            for q, llm in llms.items():
                times[q].append(decode_seconds(llm, prompt, args.decode))
        params = config.parameter_count()
        print(
            f"model: hidden {args.hidden}, {args.layers} layers, {params / 1e6:.1f} M parameters; {args.threads} "
            f"thread(s), median of {args.rounds} interleaved rounds of {args.decode} decode steps"
        )
        print(
            "| format | file | bits/weight (whole file) | decode tok/s | vs q4_0 | re-grouping error (max rel. RMS) |"
        )
        print("|---|---|---|---|---|---|")
        base = float(np.median(times["q4_0"]))
        for q, art in arts.items():
            size = art.model_file.stat().st_size
            med = float(np.median(times[q]))
            err = art.manifest.extra.get("ternary_regroup_error", {}).get("max")
            print(
                f"| gguf {q} | {size / 1e6:.2f} MB | {size * 8 / params:.2f} | {1 / med:.1f} | {base / med:.2f}x | "
                f"{'-' if err is None else f'{err:.1%}'} |"
            )
        for llm in llms.values():
            llm.close()


if __name__ == "__main__":
    main()
