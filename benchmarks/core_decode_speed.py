"""Decode tokens/s of edgecpm's torch backend (fp32, bf16) beside llama.cpp on the same GGUF and threads.

Usage: python benchmarks/core_decode_speed.py [--model PATH.gguf] [--threads 2] [--tokens 64] [--runs 5]
Runs are interleaved (torch fp32, torch bf16, llama.cpp, repeat) so machine noise hits all three alike; the
table reports medians and the ratio of medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from edgecpm.backends.llamacpp_loader import open_llama


def torch_decode_tps(model, prompt_ids: list[int], n: int) -> float:
    backend = model.backend
    logits = backend.prefill(prompt_ids)
    t = time.perf_counter()
    for _ in range(n):
        logits = backend.decode([int(np.argmax(logits))])[-1]
    return n / (time.perf_counter() - t)


def llamacpp_decode_tps(llm, prompt_ids: list[int], n: int) -> float:
    import llama_cpp

    llm.reset()
    llm.eval(prompt_ids)
    vocab = llm.n_vocab()
    t = time.perf_counter()
    for _ in range(n):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        llm.eval([int(np.argmax(logits))])
    return n / (time.perf_counter() - t)


def main() -> None:

    import edgecpm
    from edgecpm.default_model import resolve_model_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    path = resolve_model_path(args.model)
    fp32 = edgecpm.load(path, dtype="float32", threads=args.threads)
    bf16 = edgecpm.load(path, dtype="bfloat16", threads=args.threads)
    llm = open_llama(str(path), n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    prompt = fp32.tokenizer.encode("The history of the city begins in the early medieval period, when")
    results: dict[str, list[float]] = {"torch fp32": [], "torch bf16": [], "llama.cpp": []}
    for _ in range(args.runs):
        results["torch fp32"].append(torch_decode_tps(fp32, prompt, args.tokens))
        results["torch bf16"].append(torch_decode_tps(bf16, prompt, args.tokens))
        results["llama.cpp"].append(llamacpp_decode_tps(llm, prompt, args.tokens))
    ref = statistics.median(results["llama.cpp"])
    print(f"model {path.name}, {args.threads} threads, {args.tokens} tokens, median of {args.runs} runs")
    print("| runtime | decode tokens/s (median) | runs | ratio vs llama.cpp |")
    print("|---|---|---|---|")
    for name, values in results.items():
        med = statistics.median(values)
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {med:.1f} | {runs} | {med / ref:.2f} |")


if __name__ == "__main__":
    main()
