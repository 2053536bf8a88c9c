"""`edgecpm quickstart [PATH]`: the README's main job, on the built-in default model (or any model).

Four steps, each the real feature: plan the model for this host (device profile + cost model), run it on the
planned backend and report tokens/s, export it (GGUF q8_0), and profile it into a report with predictions set
beside measurements (`report.html`, `report.json`, `report.md`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgecpm.api import load
from edgecpm.default_model import resolve_model_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="plan, run, export and profile a model (default: bundled SmolLM2-135M)")
    p.add_argument("path", nargs="?", default=None)
    p.add_argument("--prompt", default="Explain in two sentences why small language models matter on phones.")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", default="edgecpm-quickstart", help="folder for the export and the report")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-report", action="store_true", help="stop after the export (the profile takes ~1 min)")
    p.add_argument("--json", action="store_true", help="print one JSON summary (no progress bars)")
    p.set_defaults(func=run)


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text)
        sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    from edgecpm.backends.registry import available_backends
    from edgecpm.exporters.registry import run_export
    from edgecpm.planning.planner import format_plan, plan

    if not args.skip_report:  # fail now, not after three steps
        from edgecpm.optional import require

        require("matplotlib", "the profiling report's plots")
    path = resolve_model_path(args.path)
    out = Path(args.out)
    summary: dict[str, Any] = {"model": str(path)}

    _say(args, "== 1/4 plan: this host ==")
    host_plan = plan(path, "host", context=2048, threads=args.threads)
    summary["plan"] = host_plan.to_dict()
    _say(args, format_plan(host_plan))

    backend = "torch"
    if host_plan.choice is not None and host_plan.choice.backend in available_backends():
        planned = host_plan.choice.backend
        # the planned backend runs this file as is when the format matches (a .gguf on llama.cpp)
        if planned == "torch" or (planned == "llama.cpp" and path.suffix == ".gguf"):
            backend = planned
    threads = args.threads or host_plan.threads
    _say(args, f"\n== 2/4 run: {backend} backend, {threads} thread{'s' if threads != 1 else ''} ==")
    model = load(path, backend=backend, threads=threads, progress=not args.json)
    result = model.generate_result([{"role": "user", "content": args.prompt}], max_new_tokens=args.max_new_tokens)
    summary["run"] = {
        "backend": model.backend.name,
        "text": result.text,
        "prompt_tokens": result.prompt_tokens,
        "new_tokens": len(result.token_ids),
        "prefill_tokens_per_s": round(result.prefill_tokens_per_s, 1),
        "decode_tokens_per_s": round(result.decode_tokens_per_s, 1),
    }
    _say(args, f"prompt:  {args.prompt}\nanswer:  {result.text.strip()}")
    _say(
        args,
        f"speed:   prefill {summary['run']['prefill_tokens_per_s']} tokens/s, decode "
        f"{summary['run']['decode_tokens_per_s']} tokens/s ({len(result.token_ids)} tokens)",
    )
    del model

    _say(args, "\n== 3/4 export: GGUF q8_0 ==")
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{path.stem.split('.')[0]}-q8_0.gguf"
    artifact = run_export(path, "gguf", target, quant="q8_0", progress=not args.json, threads=threads)
    summary["export"] = {"path": str(artifact.model_file), "bytes": artifact.model_file.stat().st_size}
    _say(args, f"wrote {artifact.model_file} ({summary['export']['bytes'] / 1e6:.1f} MB)")

    if not args.skip_report:
        from edgecpm.profiling.profiler import profile

        _say(args, "\n== 4/4 profile: predictions beside measurements ==")
        report_dir = out / "report"
        report = profile(path, device="host", out=report_dir, threads=args.threads, progress=not args.json)
        summary["report"] = {
            "dir": str(report_dir),
            "backends": [
                {
                    "backend": r["backend"],
                    "quant": r["quant"],
                    "decode_tokens_per_s": r["timings"][0]["decode_tokens_per_s"],
                }
                for r in report["backends"]
            ],
        }
        for r in summary["report"]["backends"]:
            _say(args, f"{r['backend']:<10} {r['quant']:<6} decode {r['decode_tokens_per_s']:.1f} tok/s")
        _say(args, f"report: {report_dir / 'report.html'}")
    if args.json:
        print(json.dumps(summary, default=str))
    return 0
