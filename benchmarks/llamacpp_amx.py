"""llama.cpp weight placement on this CPU: edgecpm's policy vs no extra buffer types vs llama.cpp's default.

Each (quant, placement) runs in its own subprocess (llama.cpp's AMX path segfaults on AMX Xeons, and a crash
must not end the benchmark), rounds interleaved, medians reported. Prefill: 256 tokens; decode: 32 steps.

    python benchmarks/llamacpp_amx.py --threads 1 --rounds 5 [--quants q4_0 q4_1 q8_0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {"edgecpm": "", "plain": "0", "llama.cpp-default": "1"}

CHILD = r"""
import json, os, sys, time
from edgecpm.backends.llamacpp_loader import open_llama
path, threads = sys.argv[1], int(sys.argv[2])
llm = open_llama(path, n_ctx=512, n_batch=256, n_ubatch=256, n_threads=threads, n_threads_batch=threads)
toks = llm.tokenize(("The history of the region is long and varied. " * 40).encode())[:256]
llm.eval(toks[:8]); llm.reset()  # warm up
t0 = time.perf_counter(); llm.eval(toks); prefill = time.perf_counter() - t0
steps = []
for t in toks[:32]:
    t0 = time.perf_counter(); llm.eval([t]); steps.append(time.perf_counter() - t0)
steps.sort()
print(json.dumps({"prefill_tok_s": len(toks) / prefill, "decode_tok_s": 1 / steps[len(steps) // 2],
                  "policy": llm.edgecpm_buffer_policy.mode}))
"""


def run_one(path: Path, env_value: str, threads: int) -> dict | str:
    import os

    env = dict(os.environ, EDGECPM_LLAMACPP_EXTRA_BUFTS=env_value)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(threads)], capture_output=True, text=True, env=env, timeout=600
    )
    if proc.returncode != 0:
        return f"crashed (exit {proc.returncode})"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quants", nargs="+", default=["q4_0", "q4_1", "q8_0"])
    args = ap.parse_args()
    import edgecpm
    from edgecpm.default_model import default_model_path

    src = default_model_path()
    work = Path(tempfile.mkdtemp(prefix="edgecpm-amx-"))
    files = {}
    for q in args.quants:
        files[q] = (
            src
            if q == "q4_1"
            else Path(edgecpm.export(src, format="gguf", quant=q, out=work / f"{q}.gguf", progress=False).path)
        )
    results: dict[tuple[str, str], list] = {}
    for r in range(args.rounds):
        for q, path in files.items():
            for mode, value in MODES.items():
                out = run_one(path, value, args.threads)
                results.setdefault((q, mode), []).append(out)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print("| quant | placement | prefill tok/s | decode tok/s | vs plain (prefill / decode) |")
    print("|---|---|---|---|---|")
    for q in files:
        plain = results[(q, "plain")]
        base = [x for x in plain if isinstance(x, dict)]
        bp = statistics.median(x["prefill_tok_s"] for x in base) if base else None
        bd = statistics.median(x["decode_tok_s"] for x in base) if base else None
        for mode in MODES:
            runs = results[(q, mode)]
            ok = [x for x in runs if isinstance(x, dict)]
            if not ok:
                print(f"| {q} | {mode} | {runs[0]} | | |")
                continue
            p = statistics.median(x["prefill_tok_s"] for x in ok)
            d = statistics.median(x["decode_tok_s"] for x in ok)
            ratio = f"{p / bp:.2f} / {d / bd:.2f}" if bp and bd else ""
            print(f"| {q} | {mode} ({ok[0]['policy']}) | {p:.0f} | {d:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
