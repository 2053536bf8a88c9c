"""Prefill and decode tokens/s of edgecpm's 8da4w ExecuTorch export of a 0.5B-shaped MiniCPM4 model, beside
ExecuTorch's own Llama export (`export_llm`: XNNPACK, 8da4w, KV cache, its `llama::custom_sdpa`) of the same
weights and llama.cpp q4_0 (edgecpm's GGUF exporter, run by llama-cpp-python): same machine, same threads,
runs interleaved, medians and ratios from one process.

    python benchmarks/executorch_speed.py [--threads 2] [--prefill 120] [--decode 64] [--runs 5]
        [--group-size 128] [--max-seq-len 128] [--work DIR]

Both ExecuTorch programs are timed through the same `executorch.runtime` calls: prefill = one `forward` over
`--prefill` tokens at position 0; decode = one `forward` per token. llama.cpp: `eval` of the prompt, then
one `eval` per token. Both programs are built once for `--max-seq-len` (the artifacts are reused by later
runs, whatever their `--prefill`); the peer accepts at most max_seq_len - 1 tokens per call, so `--prefill`
must be below it. The load average is printed before and after the timed runs (the host may be shared).
The peer program omits MiniCPM's µP scalings (not in its Llama architecture), which
cost nothing in edgecpm's program (folded into weights), so the shapes and work are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from executorch_peer import export_peer, write_llama_checkpoint  # noqa: E402

from edgecpm.backends.executorch_ops import import_runtime_ops  # noqa: E402
from edgecpm.backends.llamacpp_loader import open_llama
from edgecpm.exporters.registry import run_export  # noqa: E402
from edgecpm.synthetic import MINICPM4_05B_SHAPE, SyntheticSpec, cached_checkpoint  # noqa: E402
from edgecpm.weights import open_checkpoint  # noqa: E402

SPEC_05B = SyntheticSpec(**MINICPM4_05B_SHAPE)


class ETProgram:
    def __init__(self, pte: Path) -> None:
        from executorch.runtime import Runtime

        self.method = Runtime.get().load_program(pte).load_method("forward")

    def prefill(self, ids: list[int]) -> float:
        t = time.perf_counter()
        self.method.execute([torch.tensor([ids]), torch.tensor([0])])
        return len(ids) / (time.perf_counter() - t)

    def decode(self, start: int, n: int) -> float:
        tok = 5
        t = time.perf_counter()
        for i in range(n):
            out = self.method.execute([torch.tensor([[tok]]), torch.tensor([start + i])])[0]
            tok = int(out.reshape(-1, out.shape[-1])[-1].argmax())
        return n / (time.perf_counter() - t)


class LlamaCpp:
    def __init__(self, gguf: Path, threads: int, n_ctx: int, n_batch: int) -> None:

        self.llm = open_llama(
            str(gguf),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def prefill(self, ids: list[int]) -> float:
        self.llm.reset()
        self.llm._ctx.kv_cache_seq_rm(0, 0, -1)
        t = time.perf_counter()
        self.llm.eval(ids)
        return len(ids) / (time.perf_counter() - t)

    def decode(self, start: int, n: int) -> float:
        import llama_cpp

        v = self.llm.n_vocab()
        tok = 5
        t = time.perf_counter()
        for _ in range(n):
            self.llm.eval([tok])
            tok = int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(v,)).argmax())
        return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=120)
    ap.add_argument("--max-seq-len", type=int, default=128, help="prefill chunk the programs are built for")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--work", default="/tmp/edgecpm-et-speed")
    ap.add_argument("--json", default=None)
    ap.add_argument("--prepare-only", action="store_true", help="build the three artifacts, time nothing")
    args = ap.parse_args()
    if args.prefill >= args.max_seq_len:
        ap.error(f"--prefill {args.prefill} must be below --max-seq-len {args.max_seq_len} (the peer's limit)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    src = cached_checkpoint(SPEC_05B)
    config, source = open_checkpoint(src)
    ctx = args.max_seq_len + args.decode + 16
    timings: dict[str, float] = {}
    ours = work / f"edgecpm-8da4w-g{args.group_size}"
    if not (ours / "model.pte").exists():
        t = time.time()
        run_export(
            src,
            "executorch",
            ours,
            quant="8da4w",
            group_size=args.group_size,
            max_seq_len=args.max_seq_len,
            max_context_len=ctx,
            progress=False,
        )
        timings["edgecpm export s"] = time.time() - t
    peer = work / f"peer-8da4w-g{args.group_size}.pte"
    if not peer.exists():
        t = time.time()
        ckpt, params = write_llama_checkpoint(config, source, work / "peer")
        export_peer(ckpt, params, peer, "8da4w", args.group_size, args.max_seq_len, ctx, 1, [2])
        timings["peer export s"] = time.time() - t
    gguf = work / "q4_0"
    if not gguf.exists():
        run_export(src, "gguf", gguf, quant="q4_0", progress=False)
    gguf_file = next(gguf.glob("*.gguf")) if gguf.is_dir() else gguf
    if args.prepare_only:
        print(json.dumps(timings))
        return

    import_runtime_ops()
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(args.threads)
    engines = {
        "edgecpm ExecuTorch 8da4w": ETProgram(ours / "model.pte"),
        "ExecuTorch export_llm 8da4w": ETProgram(peer),
        "llama.cpp q4_0": LlamaCpp(gguf_file, args.threads, ctx, args.max_seq_len),
    }
    ids = torch.randint(0, config.vocab_size, (args.prefill,), generator=torch.Generator().manual_seed(0)).tolist()
    results: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in engines}
    for eng in engines.values():  # warm-up
        eng.prefill(ids)
        eng.decode(len(ids), 4)
    names = list(engines)
    load_before = os.getloadavg()
    for r in range(args.runs):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            eng = engines[name]
            results[name]["prefill"].append(eng.prefill(ids))
            results[name]["decode"].append(eng.decode(len(ids), args.decode))
    load_after = os.getloadavg()
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in results.items()}
    base = med["ExecuTorch export_llm 8da4w"]
    print(
        f"0.5B-shaped MiniCPM4 (hidden 1024, 24 layers, vocab 73448), threads {args.threads}, prefill "
        f"{args.prefill} tokens, decode {args.decode} tokens, median of {args.runs} interleaved runs; load average "
        f"before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )
    print("| engine | prefill tok/s | decode tok/s | prefill vs export_llm | decode vs export_llm |")
    print("|---|---|---|---|---|")
    for k, m in med.items():
        print(
            f"| {k} | {m['prefill']:.1f} | {m['decode']:.1f} | {m['prefill'] / base['prefill']:.2f} | "
            f"{m['decode'] / base['decode']:.2f} |"
        )
    sizes = {
        "edgecpm .pte MB": (ours / "model.pte").stat().st_size / 1e6,
        "peer .pte MB": peer.stat().st_size / 1e6,
        "gguf MB": gguf_file.stat().st_size / 1e6,
    }
    print(json.dumps({**sizes, **timings}))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"median": med, "runs": results, "load_average": [load_before, load_after], **sizes, **timings},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
