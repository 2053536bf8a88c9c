"""Fidelity table per GGUF quant type: file size, bits per weight, top-1 agreement and mean KL divergence
against the float32 torch reference `Model` over real text, and llama.cpp decode tokens/s.

Usage: python benchmarks/gguf_fidelity.py --model smollm2|0.5b [--quants ...] [--positions 512] [--threads 2]
  smollm2: the bundled SmolLM2-135M-Instruct Q4_1 GGUF (real weights); its reference is the torch model on the
           dequantized weights, so the table measures what re-quantizing costs on top of the shipped file.
  0.5b:    random weights with the published MiniCPM4-0.5B shapes (bf16); TQ rows use the same checkpoint with
           row-scaled ternary weights (and that checkpoint's own reference).
Text: --text FILE (docs/benchmarks.md used the full WikiText-2 test split, first 200,000 characters), else
tests/data/wikitext2_test_excerpt.txt.
llama.cpp logits come from llama-cpp-python with logits_all. Decode tok/s is measured after all exports,
round-robin over the files (so background load hits every quant alike): median of 3 rounds of 32 greedy
single-token evals after a 16-token prompt.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecpm.backends.llamacpp_loader import open_llama

ROOT = Path(__file__).resolve().parents[1]
ALL = "f32,f16,bf16,q8_0,q6_k,q5_k_m,q5_1,q5_0,q4_k_m,q4_1,q4_0,tq2_0,tq1_0"
SPEC = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_layers=24,
    num_heads=16,
    num_kv_heads=2,
    vocab_size=73448,
    dim_model_base=256,
)


def text(path: Path | None) -> tuple[str, str]:
    if path is not None:
        return path.read_text(encoding="utf-8")[:200_000], str(path)
    p = ROOT / "tests" / "data" / "wikitext2_test_excerpt.txt"
    return p.read_text(encoding="utf-8"), str(p)


def reference(src: Path, ids: list[int]) -> tuple[np.ndarray, int]:
    import torch

    from edgecpm.model import Model
    from edgecpm.weights import open_checkpoint

    config, source = open_checkpoint(src)
    model = Model.from_source(config, source, torch.float32)
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))[0].numpy().copy()
    n_params = config.parameter_count()
    del model
    return logits, n_params


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def mean_kl(ref: np.ndarray, got: np.ndarray) -> float:
    lp, lq = log_softmax(ref), log_softmax(got)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def llamacpp_logits(path: Path, ids: list[int], threads: int) -> np.ndarray:

    n = max(len(ids), 64)
    llm = open_llama(
        str(path),
        n_ctx=n,
        n_batch=n,
        n_ubatch=n,
        logits_all=True,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return logits


def decode_speeds(paths: dict[str, Path], prompt: list[int], threads: int, rounds: int = 3) -> dict[str, float]:
    """Round-robin over all files (so background load hits every quant alike); median tok/s per file."""
    import llama_cpp

    speeds: dict[str, list[float]] = {q: [] for q in paths}
    for _ in range(rounds):
        for quant, path in paths.items():
            llm = open_llama(
                str(path), n_ctx=128, n_batch=64, n_threads=threads, n_threads_batch=threads, verbose=False
            )
            v = llm.n_vocab()
            llm.eval(prompt)
            tok = int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(v,)).argmax())
            t = time.perf_counter()
            for _ in range(32):
                llm.eval([tok])
                tok = int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(v,)).argmax())
            speeds[quant].append(32 / (time.perf_counter() - t))
            llm.close()
    return {q: statistics.median(v) for q, v in speeds.items()}


def main() -> None:

    import edgecpm
    from edgecpm.errors import EdgecpmError

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["smollm2", "0.5b"], required=True)
    ap.add_argument("--quants", default=ALL)
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", type=Path, default=None, help="real text file (default: the bundled excerpt)")
    args = ap.parse_args()
    body, text_path = text(args.text)
    if args.model == "smollm2":
        from edgecpm.default_model import default_model_path

        sources = {"normal": default_model_path()}
        tok = open_llama(str(sources["normal"]), vocab_only=True, verbose=False)
        ids = tok.tokenize(body.encode(), add_bos=True)[: args.positions]
    else:
        sys.path.insert(0, str(ROOT))
        from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
        from edgecpm.tokenizer import load_tokenizer_dir
        from tests.gguf_common import row_ternary_checkpoint

        spec = SyntheticSpec(**SPEC)
        sources = {"normal": cached_checkpoint(spec), "ternary": row_ternary_checkpoint(spec)}
        ids = load_tokenizer_dir(sources["normal"], bos_id=1).encode(body)[: args.positions]
    print(f"model {args.model}; {len(ids)} positions of {text_path}; threads {args.threads}", flush=True)
    refs: dict[str, tuple[np.ndarray, int]] = {}
    rows: dict[str, str] = {}
    files: dict[str, Path] = {}
    tmp = Path(tempfile.mkdtemp(prefix="gguf-fidelity-"))
    try:
        for quant in args.quants.split(","):
            kind = "ternary" if quant.startswith("tq") and "ternary" in sources else "normal"
            src = sources[kind]
            if kind not in refs:
                refs[kind] = reference(src, ids)
            ref, n_params = refs[kind]
            try:
                art = edgecpm.export(
                    src, format="gguf", out=tmp / quant, quant=quant, progress=False, threads=args.threads
                )
            except EdgecpmError as exc:
                rows[quant] = f"| {quant} | refused: {str(exc)[:90]} | | | | |"
                print(rows[quant], flush=True)
                continue
            size = art.model_file.stat().st_size
            got = llamacpp_logits(art.model_file, ids, args.threads)
            files[quant] = art.model_file
            top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
            note = " (ternary ckpt)" if kind == "ternary" else ""
            rows[quant] = (
                f"| {quant}{note} | {size / 2**20:.1f} | {size * 8 / n_params:.2f} | {top1:.3f} | "
                f"{mean_kl(ref, got):.4f} | {{tps}} |"
            )
            print(rows[quant].replace("{tps}", "(later)"), flush=True)
        speeds = decode_speeds(files, ids[:16], args.threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\nfinal table (decode tok/s: round-robin over all files, median of 3 x 32 tokens)")
    print("| quant | file (MiB) | bits/weight | top-1 vs f32 ref | mean KL (nats) | decode tok/s |")
    print("|---|---|---|---|---|---|")
    for quant, row in rows.items():
        print(row.replace("{tps}", f"{speeds[quant]:.1f}") if quant in speeds else row)


if __name__ == "__main__":
    main()
