"""`edgecpm profile [MODEL] --device host --out DIR`: measure on this host, write report.html/.json/.md.

Without MODEL it profiles the bundled SmolLM2-135M (torch and, if installed, llama.cpp) in a couple of minutes.
"""

from __future__ import annotations

import argparse
import json


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    from edgecpm.profiling.profiler import DEFAULT_CONTEXTS, DEFAULT_DECODE_TOKENS, DEFAULT_FIDELITY_TOKENS

    p = sub.add_parser("profile", help="measure a model on this host and write a profiling report")
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="HF checkpoint dir, .gguf file or artifact dir (default: bundled SmolLM2-135M)",
    )
    p.add_argument("--device", default="host", help="only 'host' can be measured (default)")
    p.add_argument("--out", default="report", help="output folder (default: ./report)")
    p.add_argument(
        "--contexts",
        type=_ints,
        default=list(DEFAULT_CONTEXTS),
        help="comma-separated context lengths (default: %(default)s)",
    )
    p.add_argument("--decode-tokens", type=int, default=DEFAULT_DECODE_TOKENS)
    p.add_argument("--fidelity-tokens", type=int, default=DEFAULT_FIDELITY_TOKENS)
    p.add_argument("--backend", action="append", default=None, help="limit to these backends (repeatable)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default=None, help="torch backend dtype (float32 default, bfloat16)")
    p.add_argument(
        "--reference",
        default=None,
        help="source checkpoint for fidelity when MODEL is an exported artifact (torch reference)",
    )
    p.add_argument("--no-calibrate", action="store_true", help="do not store the fitted host coefficients")
    p.add_argument(
        "--eval",
        action="append",
        default=None,
        choices=("niah", "task-haystack"),
        help="add a long-context fidelity section: dense vs sparse vs q4_0 retention (repeatable)",
    )
    p.add_argument(
        "--speculative",
        metavar="ROWS",
        default=None,
        help="add a speculative-decoding section (table, speed-up vs k plot) from benchmarks/speculative.py --out",
    )
    p.add_argument("--json", action="store_true", help="print the report JSON (no progress bar)")
    p.add_argument(
        "--import",
        dest="import_file",
        metavar="FILE",
        default=None,
        help="merge the Android app's benchmark JSON into the report in --out (MODEL: the bundle the "
        "phone ran; --device: its profile unless the file names one)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgecpm.profiling.profiler import profile

    if args.import_file is not None:
        return _run_import(args)
    rows = None
    if args.speculative is not None:  # read first: a bad file fails before minutes of measuring
        from edgecpm.speculative.report import read_rows

        rows = read_rows(args.speculative)
    report = profile(
        args.model,
        device=args.device,
        out=args.out,
        contexts=args.contexts,
        decode_tokens=args.decode_tokens,
        fidelity_tokens=args.fidelity_tokens,
        backends=args.backend,
        threads=args.threads,
        dtype=args.dtype,
        calibrate=not args.no_calibrate,
        reference=args.reference,
        progress=not args.json,
    )
    if rows is not None:
        from edgecpm.profiling.report import write_report

        report["speculative"] = rows
        report["files"] = write_report(report, args.out)
    if args.eval:
        from edgecpm.evals.report_section import add_to_report

        report["eval"] = add_to_report(args.model, args.eval, args.out, args.threads, progress=not args.json)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for r in report["backends"]:
        t = r["timings"]
        fid = r["fidelity"]
        top1 = fid.get("top1_agreement")
        print(
            f"{r['backend']:<10} {r['quant']:<6} load {r['load_seconds']:.2f} s, "
            f"prefill {t[-1]['prefill_tokens_per_s']:.0f}"
            f" tok/s @{t[-1]['context']}, decode {t[0]['decode_tokens_per_s']:.1f} tok/s @{t[0]['context']} -> "
            f"{t[-1]['decode_tokens_per_s']:.1f} @{t[-1]['context']}, peak RSS {r['peak_rss_bytes'] / 1e6:.0f} MB, "
            f"top-1 {'n/a' if top1 is None else f'{top1:.3f}'}, ppl {fid['perplexity']:.2f}"
        )
    print(f"report: {args.out}/report.html")
    return 0


def _run_import(args: argparse.Namespace) -> int:
    from edgecpm.profiling.phone_import import import_phone_benchmark

    report = import_phone_benchmark(
        args.import_file,
        args.model,
        None if args.device == "host" else args.device,
        args.out,
        calibrate=not args.no_calibrate,
    )
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for name, entry in report["calibration"]["backends"].items():
        for p in entry["predictions"]:
            print(
                f"{name:<16} context {p['context']:>5}: decode {p['measured_decode']:.2f} tok/s measured, "
                f"{p['predicted_decode_default'] or 0:.2f} predicted (default), "
                f"{p['predicted_decode_calibrated'] or 0:.2f} (calibrated); "
                f"prefill {p['measured_prefill']:.1f} tok/s"
            )
    print(f"report: {args.out}/report.html")
    return 0
