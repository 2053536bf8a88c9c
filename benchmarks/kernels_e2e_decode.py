"""End-to-end decode tokens/s of a MiniCPM4-0.5B-shaped model at a long context, InfLLM v2 sparse vs dense.

The model is a random checkpoint with the published 0.5B shapes (24 layers, 16 query heads, 2 KV heads, head
dim 64, vocab 73448) run by the reference `Model` in fp32 with the published `sparse_config` (dense below 8192).
Prefilling 32K tokens through the model on this CPU would take far longer than the measurement, so the static
KV cache is filled with random keys/values of the right shape instead: decode cost does not depend on the cached
values (the sparse path always attends its fixed block budget, the dense path every key). Each timed step
decodes one token at position `--context` and rolls the cache back, so every step sees exactly that context.
Sparse and dense use the same model object (the attention layers' sparse setting is switched), in one run.

    python benchmarks/kernels_e2e_decode.py --context 32768 --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from edgecpm.config import SparseConfig
from edgecpm.model import Model
from edgecpm.synthetic import MINICPM4_05B_SHAPE, SyntheticSpec, cached_checkpoint
from edgecpm.weights import open_checkpoint

SPEC_05B = SyntheticSpec(**MINICPM4_05B_SHAPE)


def set_sparse(model: Model, sparse: SparseConfig | None) -> None:
    for layer in model.layers.values():
        layer.self_attn.sparse = sparse


def decode_seconds(model: Model, cache, context: int, steps: int) -> list[float]:
    """Per-token wall time of `steps` decodes, each at exactly `context` cached tokens (plus one warm-up)."""
    token = torch.tensor([[17]])
    times = []
    with torch.no_grad():
        for i in range(steps + 1):
            t0 = time.perf_counter()
            model(token, cache)
            if i:  # the first step also builds the compressed-key state over the whole context
                times.append(time.perf_counter() - t0)
            cache.truncate(context)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = cached_checkpoint(SPEC_05B)
    config, source = open_checkpoint(path)
    sparse = SparseConfig()
    model = Model.from_source(config.with_sparse(sparse), source, torch.float32)
    cache = model.new_cache("static", max_len=args.context + 8)
    gen = torch.Generator().manual_seed(0)
    for state in cache.layers:
        state.k[:, :, : args.context] = torch.randn(state.k[:, :, : args.context].shape, generator=gen)
        state.v[:, :, : args.context] = torch.randn(state.v[:, :, : args.context].shape, generator=gen)
    cache.length = args.context
    results = {}
    for name, setting in (("sparse", sparse), ("dense", None), ("sparse_again", sparse)):
        set_sparse(model, setting)
        for state in cache.layers:
            state.extras.clear()
        results[name] = statistics.median(decode_seconds(model, cache, args.context, args.steps))
    sparse_s = min(results["sparse"], results["sparse_again"])
    out = {
        "context": args.context,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "sparse_tok_s": 1 / sparse_s,
        "dense_tok_s": 1 / results["dense"],
        "speedup": results["dense"] / sparse_s,
        "sparse_runs_ms": [results["sparse"] * 1e3, results["sparse_again"] * 1e3],
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"0.5B-shaped model, context {args.context}, {out['threads']} threads: sparse {out['sparse_tok_s']:.2f} "
            f"tok/s, dense {out['dense_tok_s']:.2f} tok/s, speedup {out['speedup']:.2f}x "
            f"(sparse medians {out['sparse_runs_ms'][0]:.0f} / {out['sparse_runs_ms'][1]:.0f} ms)"
        )


if __name__ == "__main__":
    main()
