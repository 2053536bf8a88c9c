"""Peak RSS of `edgecpm.load` on an fp32 checkpoint vs the issue's bound (1.3 x weight bytes + 300 MB).

Usage: python benchmarks/core_load_rss.py [--shape 0.5b|tiny]
Each measurement runs in a fresh child process (ru_maxrss of that child); the baseline is the RSS of the same
child after importing torch and edgecpm, so the table shows what loading itself adds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import edgecpm, torch
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
m = edgecpm.load(sys.argv[1], dtype="float32")
elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
params = sum(p.numel() * p.element_size() for p in m.backend.model.parameters())
print(json.dumps({"peak": peak, "after_import": base, "param_bytes": params, "seconds": elapsed}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="0.5b", choices=["0.5b", "tiny"])
    args = ap.parse_args()
    from edgecpm.synthetic import MINICPM4_05B_SHAPE, SyntheticSpec

    if args.shape == "0.5b":
        spec = SyntheticSpec(**MINICPM4_05B_SHAPE, dtype="float32", shards=4, longrope=True)
    else:
        spec = SyntheticSpec(dtype="float32")
    # generate (or find) the checkpoint in its own process: Linux keeps ru_maxrss across fork+exec, so a
    # parent that generated 1.7 GB of weights would hand its high-water mark to the measured child
    gen = f"from edgecpm.synthetic import *; print(cached_checkpoint({spec!r}))"
    path = subprocess.run([sys.executable, "-c", gen], capture_output=True, text=True, check=True).stdout.split()[-1]
    from edgecpm.weights import SafetensorsSource

    weight_bytes = SafetensorsSource.from_dir(Path(path)).total_bytes()
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    bound = 1.3 * weight_bytes + 300e6
    print(
        json.dumps(
            {
                "weight_bytes": weight_bytes,
                "peak_rss": r["peak"],
                "rss_after_import": r["after_import"],
                "bound": bound,
                "peak_over_weights": r["peak"] / weight_bytes,
                "load_seconds": round(r["seconds"], 2),
                "within_bound": r["peak"] <= bound,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
