"""The compiled InfLLM v2 CPU kernel against the best dense attention on the same tensors.

MiniCPM4-8B head layout (32 query heads, 2 KV heads, head dim 128), random fp32 q/k/v, published
`sparse_config` (96 blocks of 64 = 6144 keys chosen per query). Per context length:

* decode: one query token, compressed keys already in the decode state (`InfLLMv2State`, as in real decode);
* prefill chunk: the last `--chunk` queries of an S-token prefill, causal (compressed keys from the state).

Engines, interleaved (each round runs every engine once, in rotating order; the table shows medians):
compiled sparse; vectorized torch sparse; torch SDPA dense (`dense_attention`, the fastest dense path in
torch); the vectorized path with a budget covering every block ("vectorized dense"); and the compiled kernel
with such a budget ("compiled dense", a dense baseline without torch's overheads).

Before each timed call a 128 MiB buffer is read (`--flush-mb`), so every engine reads its keys from
memory as in a real model, where the other layers evict them. With `--threads 1` the calling thread's CPU
time is reported too: on a shared machine it does not count the time the thread waited to be scheduled.

    python benchmarks/kernels_infllmv2_compiled.py --lengths 32768 --rounds 15 --threads 2
    python benchmarks/kernels_infllmv2_compiled.py --lengths 32768 --rounds 15 --threads 1 --chunk 0
    python benchmarks/kernels_infllmv2_compiled.py --lengths 32768 --rounds 15 --threads 2 --chunk 0 --dtype bf16
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
from edgecpm.runtime_kernels.infllmv2_compiled import infllmv2_compiled, load
from edgecpm.runtime_kernels.infllmv2_vectorized import infllmv2_vectorized

FLUSH = torch.empty(0)


def flush_caches() -> None:
    """Read a buffer larger than the last-level cache, so no engine finds its keys cached by its last call
    (in a real model the other layers' weights and caches evict them between two steps of a layer). Read, not
    written: dirty lines would make the timed call pay their write-back."""
    if FLUSH.numel():
        FLUSH.sum()


def interleaved(engines: dict, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and calling-thread CPU seconds per engine; each round calls every engine once, the order
    rotating per round. The thread CPU time is the contention-proof number, but only with one thread."""
    names = list(engines)
    for name in names:  # warm-up
        engines[name]()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            flush_caches()
            c0, t0 = time.thread_time(), time.perf_counter()
            engines[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
    return {n: statistics.median(t) for n, t in wall.items()}, {n: statistics.median(t) for n, t in cpu.items()}


def bench(s: int, sp: SparseConfig, args: argparse.Namespace) -> dict:
    hq, hkv, d = 32, 2, 128
    gen = torch.Generator().manual_seed(s)
    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    k = torch.randn(1, hkv, s, d, generator=gen).to(dt)
    v = torch.randn(1, hkv, s, d, generator=gen).to(dt)
    q1 = torch.randn(1, hq, 1, d, generator=gen).to(dt)
    qc = torch.randn(1, hq, args.chunk, d, generator=gen).to(dt)
    every = replace(sp, topk=-(-s // sp.block_size))  # every causal block chosen: dense through the same code
    ck = InfLLMv2State(sp).update(k)
    decode = {
        "compiled sparse": lambda: infllmv2_compiled(q1, k, v, sp, ck=ck),
        "vectorized sparse": lambda: infllmv2_vectorized(q1, k, v, sp, ck=ck),
        "SDPA dense": lambda: dense_attention(q1, k, v),
        "vectorized dense": lambda: infllmv2_vectorized(q1, k, v, every, ck=ck),
        "compiled dense": lambda: infllmv2_compiled(q1, k, v, every, ck=ck),
    }
    dec, dec_cpu = interleaved(decode, args.rounds)
    row = {"S": s, "decode_ms": {n: t * 1e3 for n, t in dec.items()}}
    if args.threads == 1:
        row["decode_thread_cpu_ms"] = {n: t * 1e3 for n, t in dec_cpu.items()}
        best_cpu = min(dec_cpu["SDPA dense"], dec_cpu["vectorized dense"], dec_cpu["compiled dense"])
        row["decode_cpu_speedup_vs_best_dense"] = best_cpu / dec_cpu["compiled sparse"]
    best_dense = min(dec["SDPA dense"], dec["vectorized dense"], dec["compiled dense"])
    row["decode_speedup_vs_best_dense"] = best_dense / dec["compiled sparse"]
    row["decode_speedup_vs_vectorized_sparse"] = dec["vectorized sparse"] / dec["compiled sparse"]
    if args.chunk:
        prefill = {
            "compiled sparse": lambda: infllmv2_compiled(qc, k, v, sp, ck=ck),
            "vectorized sparse": lambda: infllmv2_vectorized(qc, k, v, sp, ck=ck),
            "SDPA dense": lambda: dense_attention(qc, k, v),
        }
        pre, _ = interleaved(prefill, args.prefill_rounds)
        row["prefill_chunk"] = args.chunk
        row["prefill_ms"] = {n: t * 1e3 for n, t in pre.items()}
        row["prefill_speedup_vs_sdpa"] = pre["SDPA dense"] / pre["compiled sparse"]
        row["prefill_speedup_vs_vectorized_sparse"] = pre["vectorized sparse"] / pre["compiled sparse"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved decode rounds (medians)")
    ap.add_argument("--chunk", type=int, default=256, help="queries in the timed prefill chunk (0: skip)")
    ap.add_argument("--prefill-rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="q/k/v dtype (a bf16 KV cache)")
    ap.add_argument("--flush-mb", type=int, default=128, help="buffer read before each timed call (0: off)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global FLUSH
    FLUSH = torch.zeros(args.flush_mb << 18)
    load()
    sp = SparseConfig()  # published sparse_config; sparse from dense_len = 8192
    rows = []
    for s in args.lengths:
        row = bench(s, sp, args)
        rows.append(row)
        if not args.json:
            dec = "  ".join(f"{n} {t:.2f} ms" for n, t in row["decode_ms"].items())
            print(
                f"S={s}: decode {dec} | compiled sparse vs best dense {row['decode_speedup_vs_best_dense']:.1f}x, "
                f"vs vectorized sparse {row['decode_speedup_vs_vectorized_sparse']:.1f}x",
                flush=True,
            )
            if "decode_thread_cpu_ms" in row:
                cpu = "  ".join(f"{n} {t:.2f} ms" for n, t in row["decode_thread_cpu_ms"].items())
                print(
                    f"        decode thread CPU time: {cpu} | compiled sparse vs best dense "
                    f"{row['decode_cpu_speedup_vs_best_dense']:.1f}x",
                    flush=True,
                )
            if args.chunk:
                pre = "  ".join(f"{n} {t:.1f} ms" for n, t in row["prefill_ms"].items())
                print(
                    f"        prefill chunk of {args.chunk}: {pre} | compiled sparse vs SDPA "
                    f"{row['prefill_speedup_vs_sdpa']:.1f}x, vs vectorized sparse "
                    f"{row['prefill_speedup_vs_vectorized_sparse']:.1f}x",
                    flush=True,
                )
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "dtype": args.dtype, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
