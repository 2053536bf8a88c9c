"""Plans for the MiniCPM4 presets on every bundled device profile, as a Markdown table (pure prediction).

python benchmarks/planner_device_table.py [--context 4096 --context 32768]
"""

from __future__ import annotations

import argparse

import edgecpm
from edgecpm.device_profiles import list_profiles

GIB = 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, action="append", default=None)
    ap.add_argument("--model", action="append", default=None)
    args = ap.parse_args()
    contexts = args.context or [4096, 32768]
    models = args.model or ["minicpm4-0.5b", "minicpm4-8b"]
    print("| model | device | context | plan | GiB (budget) | decode tok/s (dense) | prefill tok/s | refused |")
    print("|---|---|---|---|---|---|---|---|")
    for model in models:
        for profile in list_profiles():
            for ctx in contexts:
                plan = edgecpm.plan(model, profile, context=ctx)
                budget = profile.memory_budget_bytes / GIB
                refused = sorted({f"{c.quant.name}@{c.backend}" for c in plan.candidates if not c.fits})
                if plan.choice is None:
                    print(
                        f"| {model} | {profile.name} | {ctx} | **none fits** | - ({budget:.1f}) | - | - | "
                        f"{', '.join(refused)} |"
                    )
                    continue
                c, p = plan.choice, plan.choice.prediction
                dec = (
                    "n/a"
                    if p.decode_tokens_per_s is None
                    else (f"{p.decode_tokens_per_s:.1f} ({p.decode_tokens_per_s_dense:.1f})")
                )
                pre = "n/a" if p.prefill_tokens_per_s is None else f"{p.prefill_tokens_per_s:.0f}"
                print(
                    f"| {model} | {profile.name} | {ctx} | {c.quant.name} / {c.backend} | "
                    f"{p.total_bytes / GIB:.2f} ({budget:.1f}) | {dec} | {pre} | {', '.join(refused) or '-'} |"
                )


if __name__ == "__main__":
    main()
