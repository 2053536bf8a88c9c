"""Decode tokens/s through edgecpm's llama.cpp backend vs llama-cpp-python called directly, same file and
threads, measured as a ratio in one process (runs interleaved, order alternating, median of the runs).

Usage: python benchmarks/gguf_backend_speed.py [--model PATH.gguf] [--threads 2] [--tokens 64] [--runs 7]
Default model: the bundled SmolLM2-135M-Instruct Q4_1 GGUF. Both sides decode greedily one token per call and
copy that token's logits into numpy (what a generator needs); the emitted tokens must be identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from edgecpm.backends.llamacpp_loader import open_llama


def direct_run(llm, prompt: list[int], n: int) -> tuple[float, list[int]]:
    import llama_cpp

    v = llm.n_vocab()
    llm.reset()
    llm._ctx.kv_cache_seq_rm(0, 0, -1)
    llm.eval(prompt)
    tok = int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(v,)).argmax())
    out = []
    t = time.perf_counter()
    for _ in range(n):
        llm.eval([tok])
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(v,)).copy()
        tok = int(logits.argmax())
        out.append(tok)
    return n / (time.perf_counter() - t), out


def ours_run(backend, prompt: list[int], n: int) -> tuple[float, list[int]]:
    tok = int(backend.prefill(prompt).argmax())
    out = []
    t = time.perf_counter()
    for _ in range(n):
        tok = int(backend.decode([tok])[0].argmax())
        out.append(tok)
    return n / (time.perf_counter() - t), out


def main() -> None:

    import edgecpm
    from edgecpm.default_model import default_model_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    path = str(args.model or default_model_path())
    n_ctx = 512
    llm = open_llama(
        path,
        n_ctx=n_ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    backend = edgecpm.load(path, backend="llama.cpp", threads=args.threads, n_ctx=n_ctx).backend
    prompt = llm.tokenize(b"The history of the city begins in the Roman period, when", add_bos=True)
    direct_run(llm, prompt, 8)
    ours_run(backend, prompt, 8)  # warm-up
    d, o, ratios = [], [], []
    for r in range(args.runs):
        if r % 2 == 0:
            dt, dtoks = direct_run(llm, prompt, args.tokens)
            ot, otoks = ours_run(backend, prompt, args.tokens)
        else:
            ot, otoks = ours_run(backend, prompt, args.tokens)
            dt, dtoks = direct_run(llm, prompt, args.tokens)
        assert dtoks == otoks, "the two paths decoded different tokens"
        d.append(dt)
        o.append(ot)
        ratios.append(ot / dt)
    print(f"model {path}, threads {args.threads}, {args.tokens} decode tokens x {args.runs} interleaved runs")
    print(
        f"llama-cpp-python direct: median {statistics.median(d):.1f} tok/s  (runs: {', '.join(f'{x:.1f}' for x in d)})"
    )
    print(
        f"edgecpm llama.cpp backend: median {statistics.median(o):.1f} tok/s  (runs: "
        f"{', '.join(f'{x:.1f}' for x in o)})"
    )
    print(
        f"ratio edgecpm / direct: median of per-run ratios {statistics.median(ratios):.3f}; ratio of medians "
        f"{statistics.median(o) / statistics.median(d):.3f}"
    )


if __name__ == "__main__":
    main()
