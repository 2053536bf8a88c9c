"""Peak RSS and wall time of `edgecpm export --format gguf` per quant type on a full-size random checkpoint
with the published MiniCPM4-0.5B shapes (bf16, sharded), against the bound max(1 GiB, 0.3 x source bytes).

Usage: python benchmarks/gguf_export_rss.py [--quants f16,q8_0,...] [--threads 2] [--runs 1]
Each export runs as its own process under /usr/bin/time -v (its "Maximum resident set size"), so nothing the
benchmark itself holds is counted. TQ types need ternary weights: they export a copy of the same checkpoint
whose linear weights are s_row * {-1, 0, +1}.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_layers=24,
    num_heads=16,
    num_kv_heads=2,
    vocab_size=73448,
    dim_model_base=256,
)
ALL = "f32,f16,bf16,q8_0,q4_0,q4_1,q5_0,q5_1,q4_k_m,q5_k_m,q6_k,tq1_0,tq2_0"


def checkpoints() -> tuple[Path, Path]:
    """Generate (or find) the checkpoints in a separate process so this one stays small."""
    code = (
        f"import sys, json; sys.path.insert(0, {str(ROOT)!r})\n"
        "from edgecpm.synthetic import SyntheticSpec, cached_checkpoint\n"
        "from tests.gguf_common import row_ternary_checkpoint\n"
        "spec = SyntheticSpec(**json.loads(sys.argv[1]))\n"
        "print(cached_checkpoint(spec)); print(row_ternary_checkpoint(spec))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(SPEC)], check=True, capture_output=True, text=True
    ).stdout.split()
    return Path(out[-2]), Path(out[-1])


def measure(src: Path, quant: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "artifact"
        cmd = [
            "/usr/bin/time",
            "-v",
            sys.executable,
            "-m",
            "edgecpm",
            "export",
            str(src),
            "--format",
            "gguf",
            "--quant",
            quant,
            "--out",
            str(out),
            "--json",
            "--threads",
            str(threads),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{quant}: export failed: {r.stderr[-2000:]}")
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", r.stderr).group(1)
        parts = [float(x) for x in wall.split(":")]
        seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
        size = (out / "model.gguf").stat().st_size
        shutil.rmtree(out, ignore_errors=True)
    return {"quant": quant, "peak_rss": rss_kb * 1024, "seconds": seconds, "file_bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quants", default=ALL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1, help="runs per quant; the median wall time is reported")
    args = ap.parse_args()
    normal, ternary = checkpoints()
    source_bytes = sum(p.stat().st_size for p in normal.glob("*.safetensors"))
    bound = max(1 << 30, 0.3 * source_bytes)
    print(
        f"source: {normal} ({source_bytes / 2**20:.0f} MiB bf16); bound max(1 GiB, 0.3 x source) = "
        f"{bound / 2**20:.0f} MiB"
    )
    print("| quant | peak RSS (MiB) | RSS / bound | wall time (s) | file (MiB) |")
    print("|---|---|---|---|---|")
    results = []
    for quant in args.quants.split(","):
        src = ternary if quant.startswith("tq") else normal
        runs = [measure(src, quant, args.threads) for _ in range(args.runs)]
        r = max(runs, key=lambda x: x["peak_rss"])
        r["seconds"] = statistics.median(x["seconds"] for x in runs)
        results.append(r)
        print(
            f"| {quant} | {r['peak_rss'] / 2**20:.0f} | {r['peak_rss'] / bound:.2f} | {r['seconds']:.1f} | "
            f"{r['file_bytes'] / 2**20:.0f} |",
            flush=True,
        )
    worst = max(r["peak_rss"] for r in results)
    print(
        f"\nworst peak RSS {worst / 2**20:.0f} MiB = {worst / bound:.2f} x bound "
        f"({'within' if worst <= bound else 'OVER'} the bound)"
    )


if __name__ == "__main__":
    main()
