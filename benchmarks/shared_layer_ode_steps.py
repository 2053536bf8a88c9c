"""Time of a shared-layer model at ode_steps = N vs its trained depth L, on torch and onnxruntime.

A synthetic fully shared checkpoint (one block looped L = 8 times, hidden 256) is run at N in {1, 2, 4, 8}:
torch through `edgecpm.load(ckpt, ode_steps=N)`, onnxruntime through one fp32 ONNX export per N
(`ode_steps` is fixed in an exported graph). Engines and step counts are interleaved in every round and the
median of the rounds is reported, with the ratio to N = L next to the ideal N / L (the embedding, final norm
and LM head do not shrink, so the measured ratio sits above N / L). Usage:

    python benchmarks/shared_layer_ode_steps.py [--rounds 7] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import edgecpm
from edgecpm.exporters.registry import run_export
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

L = 8
SPEC = SyntheticSpec(
    hidden_size=256,
    intermediate_size=768,
    num_layers=L,
    num_heads=4,
    num_kv_heads=2,
    shared_unique_layers=1,
    dim_model_base=64,
    seed=21,
)


def one_run(lm: edgecpm.LoadedModel, prompt: list[int], decode: int) -> float:
    t = time.perf_counter()
    logits = lm.backend.prefill(prompt)
    token = int(np.argmax(logits))
    for _ in range(decode):
        token = int(np.argmax(lm.backend.decode([token])[-1]))
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--decode", type=int, default=16)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = cached_checkpoint(SPEC)
    steps = [1, 2, 4, 8]
    prompt = [int(x) for x in np.random.default_rng(0).integers(3, 600, args.prompt)]
    engines: dict[tuple[str, int], edgecpm.LoadedModel] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in steps:
            engines[("torch", n)] = edgecpm.load(ckpt, ode_steps=n, threads=args.threads)
            art = run_export(ckpt, "onnx", Path(tmp) / f"n{n}", quant="fp32", progress=False, ode_steps=n)
            engines[("onnxruntime", n)] = edgecpm.load(art.path, threads=args.threads)
        times: dict[tuple[str, int], list[float]] = {k: [] for k in engines}
        for lm in engines.values():
            one_run(lm, prompt, 2)  # warm-up
        for _ in range(args.rounds):
            for key, lm in engines.items():
                times[key].append(one_run(lm, prompt, args.decode))
    rows = []
    for engine in ("torch", "onnxruntime"):
        full = float(np.median(times[(engine, L)]))
        for n in steps:
            med = float(np.median(times[(engine, n)]))
            rows.append(
                {
                    "engine": engine,
                    "ode_steps": n,
                    "seconds": round(med, 4),
                    "ratio_to_L": round(med / full, 3),
                    "ideal_N_over_L": n / L,
                }
            )
    print(
        f"{args.prompt}-token prefill + {args.decode} decode steps, median of {args.rounds} interleaved rounds, "
        f"{args.threads} thread(s)"
    )
    print("| engine | ode_steps | time | time / time(N=L) | N / L |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['engine']} | {r['ode_steps']} | {r['seconds'] * 1e3:.1f} ms | {r['ratio_to_L']:.2f} | "
            f"{r['ideal_N_over_L']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
