"""Measure a CUDA GPU's sustained memory bandwidth and matmul rate, to check a GPU device profile.

The GPU profiles (h100, h200, rtx-4090, ...) carry spec-sheet numbers; the planner plans with 70 % of the spec
bandwidth when nothing was measured. This script measures what the card sustains (device-to-device copy and a
read-only reduction over a 4 GiB buffer, median of 20) and dense bf16 / fp16 GEMM rates, and prints them next to
the profile's numbers. Needs a CUDA build of torch; prints JSON.

    python benchmarks/planner_gpu_probe.py [--profile h100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import tomllib


def timed(fn, repeats: int) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def bandwidth(n: int) -> dict:
    """Copy (read + write bytes) and read-only (sum) bandwidth over `n` bf16 elements, GB/s."""
    import torch

    a = torch.empty(n, dtype=torch.bfloat16, device="cuda").fill_(1)
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    t_copy = timed(lambda: b.copy_(a), 20)
    t_read = timed(lambda: a.sum(dtype=torch.float32), 20)
    return {"copy_gbs": 2 * n * 2 / t_copy / 1e9, "read_gbs": n * 2 / t_read / 1e9}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default=None, help="profile name to compare with (device_profiles/NAME.toml)")
    ap.add_argument("--gib", type=float, default=4.0)
    args = ap.parse_args()
    out: dict = {}
    try:
        out["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        out["nvidia_smi"] = f"unavailable: {exc}"
    import torch

    out["torch"] = torch.__version__
    if not torch.cuda.is_available():
        out["error"] = "torch has no CUDA here"
        print(json.dumps(out, indent=2))
        return 1
    props = torch.cuda.get_device_properties(0)
    out["gpu"] = {"name": props.name, "memory_gib": props.total_memory / 2**30, "cc": f"{props.major}.{props.minor}"}
    out.update(bandwidth(int(args.gib * 2**30) // 2))
    for name, dtype in (("bf16_tflops", torch.bfloat16), ("fp16_tflops", torch.float16)):
        m = 8192
        x = torch.randn(m, m, device="cuda", dtype=dtype)
        y = torch.randn(m, m, device="cuda", dtype=dtype)
        x @ y
        out[name] = 2 * m**3 / timed(lambda x=x, y=y: x @ y, 10) / 1e12
    if args.profile:
        path = Path(__file__).resolve().parent.parent / "device_profiles" / f"{args.profile}.toml"
        prof = tomllib.loads(path.read_text())
        spec = prof["bandwidth"]["spec_gbs"]["value"]
        out["profile"] = {
            "name": args.profile,
            "spec_gbs": spec,
            "planning_gbs_without_measurement": 0.7 * spec if isinstance(spec, (int, float)) else None,
            "fp16_gflops": prof["compute"].get("fp16_gflops", {}).get("value"),
        }
        if isinstance(spec, (int, float)):
            out["read_over_spec"] = out["read_gbs"] / spec
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
