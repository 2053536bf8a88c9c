"""`edgecpm plan MODEL --device D [--context N] [--json]`: how to run a model on a device.

Exit status 0 when a plan fits, 1 when nothing fits (the output says why and what would), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="plan how to run a model on a device (memory, speed, quantization)")
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="preset (minicpm4-0.5b, minicpm4-8b), HF checkpoint dir, .gguf file or artifact dir "
        "(default: bundled SmolLM2-135M)",
    )
    p.add_argument("--device", required=True, help="device profile name (see `edgecpm devices`), host, or a .toml")
    p.add_argument("--context", type=int, default=4096, help="context length to plan for (default 4096)")
    p.add_argument("--prompt-tokens", type=int, default=None, help="prompt length for prefill (default: context)")
    p.add_argument("--quant", default=None, help="force a quantization (e.g. q4_0, bf16, 8da4w, int4, tq2_0)")
    p.add_argument("--backend", default=None, help="force a backend (llama.cpp, executorch, onnxruntime, torch)")
    p.add_argument("--memory-gb", type=float, default=None, help="override the device's memory size (GiB)")
    p.add_argument(
        "--min-decode",
        type=float,
        default=20.0,
        help="decode tokens/s a plan should reach before the planner trades quality for speed",
    )
    p.add_argument("--dense", action="store_true", help="plan with dense attention even for InfLLM v2 models")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--ode-steps",
        type=int,
        default=None,
        help="shared-layer models: plan for N ODE steps instead of the trained depth",
    )
    p.add_argument(
        "--min-retention",
        type=float,
        default=None,
        help="refuse a quant / sparse choice whose measured retention (--retention) is below this",
    )
    p.add_argument("--retention", default=None, help="an `edgecpm eval compare` JSON with measured retention")
    p.add_argument("--json", action="store_true", help="print the edgecpm.plan/1 JSON document")
    p.set_defaults(func=run)


def _retention(path: str | None) -> dict | None:
    from edgecpm.evals.retention import measured_retention

    return None if path is None else measured_retention(path)


def run(args: argparse.Namespace) -> int:
    from edgecpm.planning.planner import format_plan, plan

    result = plan(
        args.model,
        args.device,
        context=args.context,
        prompt_tokens=args.prompt_tokens,
        quant=args.quant,
        backend=args.backend,
        memory_gb=args.memory_gb,
        min_decode_tokens_per_s=args.min_decode,
        sparse=False if args.dense else None,
        threads=args.threads,
        ode_steps=args.ode_steps,
        min_retention=args.min_retention,
        retention=_retention(args.retention),
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_plan(result))
    return 0 if result.fits else 1
