"""Peak RSS of `edgecpm export --format onnx` on a MiniCPM4-0.5B-shaped checkpoint (bound: max(1.5 GiB,
0.5 x source size)), next to the RSS of just importing what the export imports (torch, onnx, ...).

Each measurement runs in a fresh process and reads its own `ru_maxrss`.

    python benchmarks/onnx_export_rss.py [--quants fp32 int4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import edgecpm.exporters.onnx_exporter as ex
import edgecpm.exporters.onnx_decoder, onnx, onnxruntime, torch  # noqa: F401
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if sys.argv[3] != "none":
    ex.export(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)
print(json.dumps({"base_kib": base, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": time.perf_counter() - t0}))
"""


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from onnx_vs_builder import SPEC

    from edgecpm.synthetic import cached_checkpoint

    ap = argparse.ArgumentParser()
    ap.add_argument("--quants", nargs="+", default=["fp32", "fp16", "int8", "int4"])
    args = ap.parse_args()
    ckpt = cached_checkpoint(SPEC)
    src_bytes = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    bound = max(1.5 * 2**30, 0.5 * src_bytes)
    print(f"source {src_bytes / 2**20:.0f} MiB (bf16 safetensors); bound {bound / 2**30:.2f} GiB")
    print("| quant | peak RSS MiB | RSS after imports MiB | export s | output MiB | within bound |")
    print("|---|---|---|---|---|---|")
    for quant in ["none", *args.quants]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "art"
            res = subprocess.run(
                [sys.executable, "-c", CHILD, str(ckpt), str(out), quant], check=True, capture_output=True, text=True
            )
            r = json.loads(res.stdout.strip().splitlines()[-1])
            size = sum(f.stat().st_size for f in out.glob("*")) / 2**20 if out.exists() else 0
            peak = r["peak_kib"] * 1024
            print(
                f"| {quant} | {peak / 2**20:.0f} | {r['base_kib'] / 1024:.0f} | {r['seconds']:.1f} | {size:.0f} | "
                f"{'yes' if peak <= bound else 'NO'} |"
            )


if __name__ == "__main__":
    main()
