"""Decode step time of an ExecuTorch program's InfLLM v2 layers past dense_len: the compiled kernel library
(`sparse_kernel="compiled"`) against the decomposition (`"decompose"`, the portable default), same synthetic
checkpoint, same runtime, same threads, one process.

    python benchmarks/executorch_infllmv2_kernel.py [--threads 1] [--steps 16] [--work DIR]

The checkpoint is small (4 layers, hidden 512, 8 query / 2 KV heads of dim 64, fp32) with InfLLM v2 settings
scaled so that a few thousand tokens are really sparse (dense_len 1024, block 64, kernel 32 / stride 16,
top-8 + 256-token window: ~830 of 4000 keys attended). Each program is prefilled in 128-token chunks (timed
too), then timed for `--steps` single-token `decode` calls at each context length (median ms per step); the
first context is below dense_len (both run `llama::custom_sdpa`: the non-attention baseline). Exports are
kept in `--work` and reused by a later run (which then prints no export time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import edgecpm
from edgecpm.exporters.registry import run_export
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

SPARSE = {
    "kernel_size": 32,
    "kernel_stride": 16,
    "init_blocks": 1,
    "block_size": 64,
    "window_size": 256,
    "topk": 8,
    "use_nope": False,
    "dense_len": 1024,
}
SPEC = SyntheticSpec(
    hidden_size=512,
    intermediate_size=1024,
    num_layers=4,
    num_heads=8,
    num_kv_heads=2,
    sparse_config=SPARSE,
    init_std=0.05,
    seed=5,
)
CONTEXT = 4096
LENGTHS = (900, 2000, 4000)  # decode positions: below dense_len, then sparse


def step_ms(backend, ids: list[int], steps: int) -> tuple[float, float, int]:
    """Prefill `ids` (128-token chunks), then `steps` greedy single-token decodes: prefill s, median wall ms
    per step, last token."""
    t = time.perf_counter()
    out = backend.prefill(ids)
    prefill_s = time.perf_counter() - t
    tok, times = int(out.argmax()), []
    for _ in range(steps):
        t = time.perf_counter()
        row = backend.decode([tok])[0]
        times.append((time.perf_counter() - t) * 1e3)
        tok = int(row.argmax())
    return prefill_s, statistics.median(times), tok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgecpm-et-infllmv2-bench"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = cached_checkpoint(SPEC)
    results: dict[str, dict] = {}
    ids = torch.randint(8, 600, (max(LENGTHS),), generator=torch.Generator().manual_seed(1)).tolist()
    for kernel in ("compiled", "decompose"):
        out = args.work / kernel
        t, export_s = time.perf_counter(), None
        if not (out / "edgecpm.json").is_file():  # reused from an earlier run (then no export time)
            run_export(
                ckpt,
                "executorch",
                out,
                quant="fp32",
                max_seq_len=128,
                max_context_len=CONTEXT,
                sparse_kernel=kernel,
                progress=False,
                threads=args.threads,
            )
            export_s = round(time.perf_counter() - t, 1)
        backend = edgecpm.load(out, threads=args.threads).backend
        row = {"export_s": export_s, "pte_mb": round((out / "model.pte").stat().st_size / 2**20, 1)}
        for n in LENGTHS:
            prefill_s, ms, last = step_ms(backend, ids[:n], args.steps)
            row[f"prefill_s@{n}"] = round(prefill_s, 2)
            row[f"decode_ms@{n}"] = round(ms, 2)
            row[f"last_token@{n}"] = last
        results[kernel] = row
        print(kernel, json.dumps(row), flush=True)
    for n in LENGTHS[1:]:
        ratio = results["decompose"][f"decode_ms@{n}"] / results["compiled"][f"decode_ms@{n}"]
        print(f"context {n}: compiled {ratio:.2f}x faster per decode step than the decomposition")


if __name__ == "__main__":
    main()
