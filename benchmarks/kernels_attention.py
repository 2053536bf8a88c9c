"""InfLLM v2 attention time, sparse vs dense, MiniCPM4-8B head layout (32 query heads, 2 KV heads, dim 128).

Per context length S: one decode step (T = 1, compressed keys already in the decode state, as in real decode)
and one prefill chunk (the last `--chunk` queries of an S-token prefill). "dense (same path)" is the same
vectorized code with a budget covering every block (the issue's baseline); "dense SDPA" is torch's fused dense
attention for decode. Ratios are taken within one run; each timing is the median of `--runs`.

    python benchmarks/kernels_attention.py --lengths 8192 16384 32768 65536 --runs 7 --threads 1
    python benchmarks/kernels_attention.py --device cuda --impl triton      # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from edgecpm.config import SparseConfig
from edgecpm.runtime_kernels import InfLLMv2State, dense_attention
from edgecpm.runtime_kernels.infllmv2_vectorized import infllmv2_vectorized


def median_time(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_length(s: int, sp: SparseConfig, args: argparse.Namespace, dev: torch.device) -> dict:
    """Time decode and one prefill chunk at context length s (sparse, dense through the same path, SDPA)."""
    hq, hkv, d = 32, 2, 128
    gen = torch.Generator().manual_seed(s)
    k = torch.randn(1, hkv, s, d, generator=gen).to(dev)
    v = torch.randn(1, hkv, s, d, generator=gen).to(dev)
    q1 = torch.randn(1, hq, 1, d, generator=gen).to(dev)
    qc = torch.randn(1, hq, args.chunk, d, generator=gen).to(dev)
    all_blocks = replace(sp, topk=-(-s // sp.block_size))  # every causal block selected: dense, same code
    ck = InfLLMv2State(sp).update(k)  # decode keeps the compressed keys in its state

    def timed(fn, runs: int) -> float:
        def call() -> None:
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        return median_time(call, runs)

    sparse_fn = infllmv2_vectorized
    if args.impl == "triton":
        from edgecpm.runtime_kernels.infllmv2_triton import infllmv2_triton as sparse_fn
    dec_sparse = timed(lambda: sparse_fn(q1, k, v, sp, ck=ck), args.runs)
    dec_dense_same = timed(lambda: infllmv2_vectorized(q1, k, v, all_blocks, ck=ck), args.runs)
    dec_sdpa = timed(lambda: dense_attention(q1, k, v), args.runs)
    pre_sparse = timed(lambda: sparse_fn(qc, k, v, sp, ck=ck), args.prefill_runs)
    pre_dense_same = timed(lambda: infllmv2_vectorized(qc, k, v, all_blocks, ck=ck), args.prefill_runs)
    return {
        "S": s,
        "decode_sparse_ms": dec_sparse * 1e3,
        "decode_dense_same_path_ms": dec_dense_same * 1e3,
        "decode_dense_sdpa_ms": dec_sdpa * 1e3,
        "decode_speedup_vs_same_path": dec_dense_same / dec_sparse,
        "decode_speedup_vs_sdpa": dec_sdpa / dec_sparse,
        "prefill_chunk": args.chunk,
        "prefill_sparse_ms": pre_sparse * 1e3,
        "prefill_dense_same_path_ms": pre_dense_same * 1e3,
        "prefill_speedup_vs_same_path": pre_dense_same / pre_sparse,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--chunk", type=int, default=64, help="queries in the timed prefill chunk")
    ap.add_argument("--prefill-runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--impl",
        choices=["vectorized", "triton"],
        default="vectorized",
        help="implementation timed as 'sparse' (the dense baselines stay the same)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sp = SparseConfig()  # the published sparse_config; sparse from dense_len = 8192
    warm = torch.randn(1, 2, 9000, 128, device=dev)  # first-call costs (allocator, BLAS) stay out of the table
    infllmv2_vectorized(torch.randn(1, 32, 1, 128, device=dev), warm, warm, sp)
    rows = []
    for s in args.lengths:
        row = bench_length(s, sp, args, dev)
        rows.append(row)
        if not args.json:
            print(
                f"S={s:6d}  decode sparse {row['decode_sparse_ms']:7.2f} ms  dense(same path) "
                f"{row['decode_dense_same_path_ms']:7.2f} ms ({row['decode_speedup_vs_same_path']:.1f}x)  dense SDPA "
                f"{row['decode_dense_sdpa_ms']:7.2f} ms ({row['decode_speedup_vs_sdpa']:.1f}x) | prefill chunk of "
                f"{args.chunk}: sparse {row['prefill_sparse_ms']:8.1f} ms  dense(same path) "
                f"{row['prefill_dense_same_path_ms']:8.1f} ms ({row['prefill_speedup_vs_same_path']:.1f}x)",
                flush=True,
            )
    if args.json:
        print(
            json.dumps(
                {"device": str(dev), "impl": args.impl, "threads": torch.get_num_threads(), "rows": rows}, indent=2
            )
        )


if __name__ == "__main__":
    main()
