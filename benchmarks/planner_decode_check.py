"""Does the calibrated planner predict decode speed of an unseen model? (issue 7, "within ±35 %")

1. `edgecpm profile` on the bundled SmolLM2-135M (the README's main job) calibrates this host's cost model.
2. A MiniCPM4-0.5B-shaped random checkpoint (`edgecpm.synthetic`, full published shape) is planned on
   `--device host` for each backend: the torch backend on the checkpoint (fp32), and llama.cpp on a Q4_0 GGUF
   exported from it (when the GGUF exporter and llama.cpp backend are installed).
3. The same model is then measured fresh: prefill `--context` tokens, decode `--decode-tokens` greedily,
   `--runs` times; decode tokens/s = 1 / the 10th-percentile step (the profiler's calibration statistic: on a
   shared machine a preempted step is only ever slower) and, for reference, 1 / the median step.

Each of `--rounds` rounds runs, per backend, one `edgecpm.profile` of the default model on that backend and
then at once the fresh measurement, so a change of load on the shared machine between calibration and check
stays small.

Prints a Markdown table (predicted, measured, ratio, pass/fail) and writes JSON to `--json-out`. The model was
never seen by the calibration (different size, vocabulary, architecture), so this is an out-of-sample check.

    python benchmarks/planner_decode_check.py --rounds 3 --runs 3
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

from edgecpm.synthetic import MINICPM4_05B_SHAPE  # noqa: E402

SPEC_05B = dict(MINICPM4_05B_SHAPE)


def measure_decode(path: Path, backend: str, threads: int, context: int, decode_tokens: int, runs: int) -> dict:
    """Fresh measurement: prefill `context` random tokens, decode greedily; the profiler's statistics."""
    import edgecpm
    from edgecpm.profiling.profiler import fast_step

    model = edgecpm.load(path, backend=backend, threads=threads)
    rng = np.random.default_rng(0)
    ids = [int(i) for i in rng.integers(10, min(model.config.vocab_size, 30000), size=context)]
    steps: list[float] = []
    medians = []
    for _ in range(runs):
        logits = model.backend.prefill(ids)
        token = int(np.argmax(logits))
        run = []
        for _ in range(decode_tokens):
            t = time.perf_counter()
            out = model.backend.decode([token])
            run.append(time.perf_counter() - t)
            token = int(np.argmax(out[-1]))
        steps += run
        medians.append(statistics.median(run))
    close = getattr(model.backend, "close", None)
    if close:
        close()
    return {"p10": 1.0 / fast_step(steps), "median": 1.0 / statistics.median(medians)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="profile + fresh measurement rounds")
    ap.add_argument("--runs", type=int, default=3, help="decode runs per fresh measurement")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--decode-tokens", type=int, default=32, help="in the profile run and the check")
    ap.add_argument("--threads", type=int, default=None, help="default: the host's free cores at start")
    ap.add_argument("--backends", default="torch,llama.cpp")
    ap.add_argument(
        "--gguf-quants",
        default="q4_0,q4_1",
        help="GGUF quants of the 0.5B model to check (q4_1 = the calibration model's quant)",
    )
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    import edgecpm
    from edgecpm.backends.registry import available_backends
    from edgecpm.device_profiles.host import choose_threads
    from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

    threads = args.threads or choose_threads()["threads"]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ckpt = cached_checkpoint(SyntheticSpec(**SPEC_05B))
    targets: list[tuple[str, Path]] = []
    wanted = args.backends.split(",")
    if "torch" in wanted:
        targets.append(("torch", ckpt))
    if "llama.cpp" in wanted and "llama.cpp" in available_backends():
        for quant in args.gguf_quants.split(","):
            gguf_dir = ckpt.parent / f"{ckpt.name}-gguf-{quant}"
            if not (gguf_dir / "edgecpm.json").exists():
                edgecpm.export(ckpt, format="gguf", out=gguf_dir, quant=quant)
            targets.append(("llama.cpp", gguf_dir))
    rows = []
    for rnd in range(args.rounds):
        for backend, path in targets:
            # one profile run of the default model on this backend, then the check at once: the load of a
            # shared machine changes within minutes, so calibration and check stay seconds apart
            with tempfile.TemporaryDirectory() as tmp:  # the calibration itself is stored for `plan`
                edgecpm.profile(
                    None,
                    device="host",
                    out=tmp,
                    threads=threads,
                    backends=[backend],
                    decode_tokens=args.decode_tokens,
                    progress=True,
                )
            quant = "f32" if backend == "torch" else None  # what the torch backend runs by default
            plan = edgecpm.plan(path, "host", context=args.context, backend=backend, quant=quant, threads=threads)
            if plan.choice is None:
                print(f"{backend}: the plan does not fit this host: {plan.reason}", file=sys.stderr)
                continue
            pred = plan.choice.prediction.decode_tokens_per_s
            got = measure_decode(path, backend, threads, args.context, args.decode_tokens, args.runs)
            rows.append(
                {
                    "round": rnd + 1,
                    "backend": backend,
                    "quant": plan.choice.quant.name,
                    "predicted": pred,
                    "measured_p10": got["p10"],
                    "measured_median": got["median"],
                    "ratio_p10": pred / got["p10"],
                    "ratio_median": pred / got["median"],
                    "coefficients": plan.choice.prediction.coefficients.to_dict(),
                    "bytes_per_token": plan.choice.prediction.decode_bytes_per_token,
                }
            )
            print(
                f"round {rnd + 1} {backend}: predicted {pred:.2f}, measured p10 {got['p10']:.2f} "
                f"median {got['median']:.2f}",
                file=sys.stderr,
            )
    summary = {}
    for key in dict.fromkeys(f"{r['backend']} {r['quant']}" for r in rows):
        mine = [r for r in rows if f"{r['backend']} {r['quant']}" == key]
        if mine:
            summary[key] = {
                "median_ratio_p10": statistics.median(r["ratio_p10"] for r in mine),
                "rounds_within_35pct": sum(abs(r["ratio_p10"] - 1) <= 0.35 for r in mine),
                "rounds": len(mine),
            }
    result = {
        "started": started,
        "threads": threads,
        "context": args.context,
        "decode_tokens": args.decode_tokens,
        "runs": args.runs,
        "model": "MiniCPM4-0.5B-shaped synthetic " + str(SPEC_05B),
        "rows": rows,
        "summary": summary,
    }
    print(
        f"\nthreads={threads}, context={args.context}, decode tokens={args.decode_tokens} x {args.runs} runs, "
        f"{args.rounds} rounds\n"
    )
    print(
        "| round | backend | quant | predicted decode tok/s | measured (p10 step) | predicted/measured | "
        "within ±35 % | measured (median step) | predicted/median |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['round']} | {r['backend']} | {r['quant']} | {r['predicted']:.2f} | {r['measured_p10']:.2f} | "
            f"{r['ratio_p10']:.2f} | {'yes' if abs(r['ratio_p10'] - 1) <= 0.35 else 'NO'} | "
            f"{r['measured_median']:.2f} | {r['ratio_median']:.2f} |"
        )
    for backend, s in summary.items():
        print(
            f"\n{backend}: median predicted/measured {s['median_ratio_p10']:.2f}; "
            f"{s['rounds_within_35pct']}/{s['rounds']} rounds within ±35 %"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0 if summary and all(abs(s["median_ratio_p10"] - 1) <= 0.35 for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
