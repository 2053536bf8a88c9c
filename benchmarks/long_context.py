"""Long context on the fast paths: time to first token and decode tok/s at 8K / 16K / 32K (64K with --slow) of a
MiniCPM4-0.5B-shaped random checkpoint with the published sparse_config, for

    et-sparse   edgecpm ExecuTorch 8da4w, InfLLM v2 (compressed keys in state, torch.cond dense/sparse switch)
    et-sparse-compiled  the same, the sparse branch through edgecpm's compiled kernel library (sparse_kernel=compiled)
    et-dense    edgecpm ExecuTorch 8da4w, the same weights without sparse_config (llama::custom_sdpa)
    onnx-sparse edgecpm ONNX int4, InfLLM v2 node with compressed keys as graph state
    onnx-dense  edgecpm ONNX int4, sparse=False (GroupQueryAttention)
    torch-sparse edgecpm torch backend (fp32 reference model, vectorized InfLLM v2 with its state)
    llama-fa    llama.cpp q4_0 (edgecpm's GGUF export; dense: llama.cpp has no InfLLM v2), flash attention on
    llama-nofa  the same, flash attention off

    python benchmarks/long_context.py [--contexts 8192,16384,32768] [--slow] [--decode 16] [--runs 1]
        [--threads 2] [--engines et-sparse,...] [--work DIR] [--out results.json]

One run: for each context and repeat, every engine in turn (interleaved), each in its own subprocess so its
peak RSS (getrusage ru_maxrss of that process) is its own. Prefill = the whole prompt fed the way each engine
takes long prompts (ExecuTorch: max_seq_len chunks inside the backend; ONNX: --onnx-chunk tokens a call;
torch: one prefill call, chunked inside the kernel; llama.cpp: eval with n_batch 512), timed to the logits
of the last prompt token; decode = --decode greedy steps, one token a call. Exports are made once into --work
and reused by later runs (named by engine and context only); `--fresh et-sparse-compiled,...` exports those
engines again, which a change to the exporter or to a program's graph needs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ENGINES = (
    "et-sparse",
    "et-sparse-compiled",
    "et-dense",
    "onnx-sparse",
    "onnx-dense",
    "torch-sparse",
    "llama-fa",
    "llama-nofa",
)
DEFAULT_CONTEXTS = (8192, 16384, 32768)
SLOW_CONTEXTS = DEFAULT_CONTEXTS + (65536,)


def checkpoints(work: Path, max_len: int) -> tuple[Path, Path]:
    """The sparse 0.5B-shaped checkpoint and a dense twin (same weight files, no sparse_config)."""
    from edgecpm.config import SparseConfig
    from edgecpm.synthetic import MINICPM4_05B_SHAPE, SyntheticSpec, cached_checkpoint

    spec = SyntheticSpec(
        **MINICPM4_05B_SHAPE, sparse_config=asdict(SparseConfig()), max_position_embeddings=max(32768, max_len)
    )
    sparse = cached_checkpoint(spec)
    dense = work / f"dense-{sparse.name}"
    if not (dense / "config.json").exists():
        tmp = dense.with_name(dense.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in sparse.iterdir():
            if f.name != "config.json":
                os.symlink(f.resolve(), tmp / f.name)
        cfg = json.loads((sparse / "config.json").read_text())
        cfg.pop("sparse_config", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        os.replace(tmp, dense)
    return sparse, dense


def artifact_path(engine: str, work: Path, ctx: int) -> Path:
    """Where the script keeps `engine`'s export (torch-sparse runs the checkpoint itself)."""
    if engine.startswith("llama"):
        return work / "q4_0.gguf"
    return work / (f"{engine}-{ctx}" if engine.startswith("et") else engine)


def artifact(engine: str, work: Path, sparse: Path, dense: Path, ctx: int, threads: int) -> Path:
    """Export (once) what `engine` runs; returns its path."""
    from edgecpm.exporters.registry import run_export

    if engine == "torch-sparse":
        return sparse
    out = artifact_path(engine, work, ctx)
    if engine.startswith("llama"):
        if not out.exists():
            run_export(sparse, "gguf", out, "q4_0", progress=False)
        return out
    if engine.startswith("et"):
        if not out.exists():
            src = dense if engine == "et-dense" else sparse
            kernel = {"sparse_kernel": "compiled"} if engine == "et-sparse-compiled" else {}
            run_export(
                src,
                "executorch",
                out,
                "8da4w",
                progress=False,
                max_seq_len=128,
                max_context_len=ctx,
                threads=threads,
                **kernel,
            )
        return out
    if not out.exists():
        run_export(sparse, "onnx", out, "int4", progress=False, sparse=engine == "onnx-sparse")
    return out


def measure(engine: str, path: Path, n: int, decode: int, threads: int, onnx_chunk: int) -> dict:
    """Run in the child process: prefill n tokens, then `decode` greedy steps."""
    import numpy as np

    rng = np.random.default_rng(n)
    ids = [int(t) for t in rng.integers(3, 73000, n)]
    if engine.startswith("llama"):
        from edgecpm.backends.llamacpp_loader import open_llama

        llm = open_llama(
            str(path),
            n_ctx=n + decode + 16,
            n_batch=512,
            n_ubatch=512,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=engine == "llama-fa",
            verbose=False,
        )
        vocab = llm.n_vocab()

        def last() -> int:  # the last evaluated token's logits (scores are kept only with logits_all)
            return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))))

        t = time.perf_counter()
        llm.eval(ids)
        tok = last()
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(decode):
            llm.eval([tok])
            tok = last()
        dec = time.perf_counter() - t
    else:
        import edgecpm

        backend_name = "torch" if engine == "torch-sparse" else "auto"
        model = edgecpm.load(path, backend=backend_name, threads=threads)
        b = model.backend
        t = time.perf_counter()
        if engine.startswith("onnx"):
            logits = b.prefill(ids[:onnx_chunk])
            for i in range(onnx_chunk, n, onnx_chunk):
                logits = b.decode(ids[i : i + onnx_chunk])[-1]
        else:
            logits = b.prefill(ids)
        ttft = time.perf_counter() - t
        tok = int(np.argmax(logits))
        t = time.perf_counter()
        for _ in range(decode):
            tok = int(np.argmax(b.decode([tok])[-1]))
        dec = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ttft_s": ttft, "prefill_tok_s": n / ttft, "decode_tok_s": decode / dec, "peak_rss_mb": rss}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    res = measure(args.child, Path(args.path), args.context, args.decode, args.threads, args.onnx_chunk)
    print("RESULT " + json.dumps(res), flush=True)


def run_child(engine: str, path: Path, ctx: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--path", str(path), "--context", str(ctx)]
    cmd += ["--decode", str(args.decode), "--threads", str(args.threads), "--onnx-chunk", str(args.onnx_chunk)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default=None, help="comma-separated prompt lengths (default 8192,16384,32768)")
    ap.add_argument("--slow", action="store_true", help="add 65536")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--onnx-chunk", type=int, default=256)
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per engine run")
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "edgecpm" / "long_context"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--fresh", default="", help="engines whose cached export in --work is made again")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--context", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    contexts = [int(c) for c in args.contexts.split(",")] if args.contexts else list(DEFAULT_CONTEXTS)
    if args.slow and 65536 not in contexts:
        contexts.append(65536)
    engines = [e for e in args.engines.split(",") if e]
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        sys.exit(f"unknown engine {bad[0]!r}; expected some of {', '.join(ENGINES)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # one ExecuTorch program per engine for the longest context (its KV cache is allocated at that length)
    ctx_max = max(contexts) + args.decode + 128
    sparse, dense = checkpoints(work, ctx_max)
    paths = {}
    fresh = {e for e in args.fresh.split(",") if e}
    for e in engines:
        t = time.perf_counter()
        if e in fresh and e != "torch-sparse":  # the script's own export of this engine, made again
            old = artifact_path(e, work, ctx_max)
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        paths[e] = artifact(e, work, sparse, dense, ctx_max, args.threads)
        print(f"# {e}: {paths[e]} ({time.perf_counter() - t:.0f} s to prepare)", flush=True)
    if args.prepare_only:
        return
    results: dict[str, dict[int, list[dict]]] = {e: {c: [] for c in contexts} for e in engines}
    for ctx in contexts:
        for _ in range(args.runs):
            for e in engines:  # interleaved: every engine once before any engine again
                r = run_child(e, paths[e], ctx, args)
                results[e][ctx].append(r)
                print(f"# {ctx} {e}: {json.dumps(r)}", flush=True)
    summary = summarize(results)
    print(table(summary, contexts, engines))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results, "summary": summary}, indent=1))


def summarize(results: dict) -> dict:
    out: dict = {}
    for e, by_ctx in results.items():
        for ctx, runs in by_ctx.items():
            ok = [r for r in runs if "error" not in r]
            if not ok:
                out.setdefault(e, {})[ctx] = {"error": runs[0].get("error") if runs else "not run"}
                continue
            out.setdefault(e, {})[ctx] = {
                k: statistics.median(r[k] for r in ok) for k in ("ttft_s", "decode_tok_s", "peak_rss_mb")
            }
    return out


def table(summary: dict, contexts: list[int], engines: list[str]) -> str:
    rows = ["| engine | context | time to first token (s) | decode tok/s | peak RSS (MB) |", "|---|---|---|---|---|"]
    for ctx in contexts:
        for e in engines:
            r = summary[e][ctx]
            if "error" in r:
                rows.append(f"| {e} | {ctx} | {r['error']} | | |")
            else:
                rows.append(f"| {e} | {ctx} | {r['ttft_s']:.1f} | {r['decode_tok_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
