"""Does the calibrated planner predict decode speed of an unseen model? (issue 7, "within ±35 %")

1. `edgecpm profile` on the bundled SmolLM2-135M (the README's main job) calibrates this host's cost model.
2. A MiniCPM4-0.5B-shaped random checkpoint (`edgecpm.synthetic`, full published shape) is planned on
   `--device host` for each backend: the torch backend on the checkpoint (fp32), and llama.cpp on a Q4_0 GGUF
   exported from it (when the GGUF exporter and llama.cpp backend are installed).
3. The same model is then measured fresh: prefill `--context` tokens, decode `--decode-tokens` greedily,
   median step time; median over `--runs` runs.

Prints a Markdown table (predicted, measured, ratio, pass/fail) and writes JSON to `--json-out`. The model was
never seen by the calibration (different size, vocabulary, architecture), so this is an out-of-sample check.

    python benchmarks/planner_decode_check.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPEC_05B = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_layers=24,
    num_heads=16,
    num_kv_heads=2,
    vocab_size=73448,
    dim_model_base=256,
)


def measure_decode(path: Path, backend: str, threads: int, context: int, decode_tokens: int, runs: int) -> dict:
    import edgecpm

    t0 = time.perf_counter()
    model = edgecpm.load(path, backend=backend, threads=threads)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = [int(i) for i in rng.integers(10, min(model.config.vocab_size, 30000), size=context)]
    per_run = []
    for _ in range(runs):
        logits = model.backend.prefill(ids)
        token = int(np.argmax(logits))
        steps = []
        for _ in range(decode_tokens):
            t = time.perf_counter()
            out = model.backend.decode([token])
            steps.append(time.perf_counter() - t)
            token = int(np.argmax(out[-1]))
        per_run.append(1.0 / statistics.median(steps))
    close = getattr(model.backend, "close", None)
    if close:
        close()
    return {"decode_tokens_per_s": statistics.median(per_run), "runs": per_run, "load_seconds": load_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="default: the host's free cores at start")
    ap.add_argument("--skip-profile", action="store_true", help="reuse the stored calibration")
    ap.add_argument("--backends", default="torch,llama.cpp")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    import edgecpm
    from edgecpm.backends.base import available_backends
    from edgecpm.device_profiles.host import cpu_info, recommended_threads
    from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

    threads = args.threads or recommended_threads(cpu_info()["cores"])
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if not args.skip_profile:
        with tempfile.TemporaryDirectory() as tmp:
            edgecpm.profile(None, device="host", out=tmp, threads=threads, progress=True)
    ckpt = cached_checkpoint(SyntheticSpec(**SPEC_05B))
    targets: list[tuple[str, Path]] = []
    wanted = args.backends.split(",")
    if "torch" in wanted:
        targets.append(("torch", ckpt))
    if "llama.cpp" in wanted and "llama.cpp" in available_backends():
        gguf_dir = ckpt.parent / f"{ckpt.name}-gguf-q4_0"
        if not (gguf_dir / "edgecpm.json").exists():
            edgecpm.export(ckpt, format="gguf", out=gguf_dir, quant="q4_0")
        targets.append(("llama.cpp", gguf_dir))
    rows = []
    for backend, path in targets:
        quant = "f32" if backend == "torch" else None  # what the torch backend runs by default
        plan = edgecpm.plan(path, "host", context=args.context, backend=backend, quant=quant, threads=threads)
        pred = plan.choice.prediction if plan.choice else None
        if pred is None:
            print(f"{backend}: the plan does not fit this host: {plan.reason}", file=sys.stderr)
            continue
        got = measure_decode(path, backend, threads, args.context, args.decode_tokens, args.runs)
        ratio = pred.decode_tokens_per_s / got["decode_tokens_per_s"]
        rows.append(
            {
                "backend": backend,
                "quant": plan.choice.quant.name,
                "context": args.context,
                "predicted_decode": pred.decode_tokens_per_s,
                "measured_decode": got["decode_tokens_per_s"],
                "measured_runs": got["runs"],
                "ratio": ratio,
                "within_35pct": abs(ratio - 1) <= 0.35,
                "coefficients": pred.coefficients.source,
                "bytes_per_token": pred.decode_bytes_per_token,
            }
        )
    result = {
        "started": started,
        "threads": threads,
        "model": "MiniCPM4-0.5B-shaped synthetic " + str(SPEC_05B),
        "rows": rows,
    }
    print(f"\nthreads={threads}, context={args.context}, decode tokens={args.decode_tokens}, runs={args.runs}\n")
    print(
        "| backend | quant | predicted decode tok/s | measured decode tok/s (median) | predicted/measured | "
        "within ±35 % |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['quant']} | {r['predicted_decode']:.2f} | {r['measured_decode']:.2f} "
            f"({', '.join(f'{x:.2f}' for x in r['measured_runs'])}) | {r['ratio']:.2f} | "
            f"{'yes' if r['within_35pct'] else 'NO'} |"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0 if rows and all(r["within_35pct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
