"""Profile a model on this machine into a report: speed and memory measured beside the cost model's predictions.

Writes report.html (with plots), report.md and report.json, and stores this host's fitted coefficients so
that `edgecpm plan MODEL --device host` predicts with them (pass --no-calibrate to leave them alone).

    python examples/profile_host.py [MODEL] --out report/     # default MODEL: the bundled SmolLM2-135M
"""

from __future__ import annotations

import argparse

import edgecpm


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--out", default="report")
    ap.add_argument("--contexts", type=_ints, default=[128, 512, 1024], help="comma-separated prompt lengths")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--fidelity-tokens", type=int, default=256)
    ap.add_argument("--no-calibrate", action="store_true")
    args = ap.parse_args(argv)

    report = edgecpm.profile(
        args.model,
        out=args.out,
        contexts=args.contexts,
        decode_tokens=args.decode_tokens,
        fidelity_tokens=args.fidelity_tokens,
        calibrate=not args.no_calibrate,
        progress=False,
    )
    for name, entry in report["calibration"]["backends"].items():
        for p in entry["predictions"]:
            print(
                f"{name:<10} context {p['context']:>5}: decode {p['measured_decode']:7.1f} tok/s measured, "
                f"{p['predicted_decode_default']:7.1f} predicted, {p['predicted_decode_calibrated']:7.1f} "
                "after calibration"
            )
    print(f"report: {args.out}/report.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
