"""Full-size scale: a MiniCPM4-8B-shaped random checkpoint (published sharded bf16 layout, ~16 GB) exported to
GGUF q4_0 and ONNX int4, each export's peak RSS and wall time against the bound 0.3 x source bytes, then the
8B GGUF planned for the host and opened memory-mapped in llama.cpp for a few decode steps.

Usage: nice -n 10 python benchmarks/export_8b.py [--work /root/.cache/edgecpm-8b] [--steps gguf,onnx,llama]
       [--keep]

The checkpoint is written shard by shard, tensor by tensor in 64 Mi-element chunks (the safetensors header is
computed first), so building it needs well under 1 GB of memory. Every export and the llama.cpp run are their
own process under `/usr/bin/time -v` ("Maximum resident set size"), so nothing this script holds is counted.
ExecuTorch is not attempted: its exporter builds the eager fp32 torch module (8.2 G params x 4 B = 33 GB)
before quantizing, which does not fit in 24 GB. Everything is deleted at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4  # the published MiniCPM4-8B checkpoint ships 4 shards
CHUNK = 1 << 26  # elements generated at a time


def config_8b() -> dict:
    from edgecpm.config import SparseConfig
    from edgecpm.synthetic import SyntheticSpec, config_dict

    spec = SyntheticSpec(
        hidden_size=4096,
        intermediate_size=16384,
        num_layers=32,
        num_heads=32,
        num_kv_heads=2,
        vocab_size=73448,
        dim_model_base=256,
        tied=False,
        sparse_config=asdict(SparseConfig()),
        extra_config={"rms_norm_eps": 1e-6},
    )
    return config_dict(spec, 73448)


_POOL: dict[tuple[float, float], bytes] = {}


def _bf16_chunks(rng: np.random.Generator, n: int, mean: float, std: float):
    """n bf16 values ~ N(mean, std): one pool of CHUNK normal samples per (mean, std), cycled from a random offset.

    Drawing 8 G normal samples costs ~an hour of one core on this machine; what the exports cost does not
    depend on which values the weights hold, so the pool is drawn once and reused.
    """
    if (mean, std) not in _POOL:
        x = rng.standard_normal(CHUNK, dtype=np.float32)
        x *= std
        x += mean
        _POOL[(mean, std)] = (x.view(np.uint32) >> 16).astype("<u2").tobytes()  # bf16 = top half of fp32 bits
    pool = memoryview(_POOL[(mean, std)])
    pos = 2 * int(rng.integers(CHUNK))
    left = 2 * n
    while left:  # slices of the pool, wrapping around: no copy of it per chunk
        take = min(left, len(pool) - pos)
        yield pool[pos : pos + take]
        left -= take
        pos = (pos + take) % len(pool)


def build_checkpoint(out: Path) -> int:
    """Write config, tokenizer and 4 bf16 shards + index; returns the safetensors bytes."""
    from edgecpm.config import config_from_hf_dict
    from edgecpm.synthetic import _write_tokenizer_files, train_tokenizer
    from edgecpm.weights.safetensors_source import expected_shapes

    cfg = config_8b()
    shapes = expected_shapes(config_from_hf_dict(cfg))
    names = list(shapes)
    sizes = {n: 2 * int(np.prod(shapes[n])) for n in names}
    total = sum(sizes.values())
    # split into SHARDS contiguous groups of about equal bytes
    groups: list[list[str]] = [[]]
    acc = 0
    for n in names:
        if acc >= total * len(groups) / SHARDS and len(groups) < SHARDS:
            groups.append([])
        groups[-1].append(n)
        acc += sizes[n]
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    weight_map = {}
    for s, group in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        header: dict = {"__metadata__": {"format": "pt"}}
        off = 0
        for n in group:
            header[n] = {"dtype": "BF16", "shape": list(shapes[n]), "data_offsets": [off, off + sizes[n]]}
            off += sizes[n]
            weight_map[n] = fname
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with open(out / fname, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for n in group:
                one_d = len(shapes[n]) == 1
                for piece in _bf16_chunks(
                    rng,
                    sizes[n] // 2,
                    1.0 if one_d else 0.0,
                    0.1 if one_d else (1.0 if "embed" in n or "lm_head" in n else 0.02),
                ):
                    f.write(piece)
        print(f"  wrote {fname} ({off / 2**30:.2f} GiB)", flush=True)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    _write_tokenizer_files(out, train_tokenizer(600), 73448)
    return total


def timed(cmd: list[str]) -> dict:
    """Run `cmd` under /usr/bin/time -v; its peak RSS (bytes), wall seconds, return code and output tail."""
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    return {
        "rc": r.returncode,
        "peak_rss": int(m.group(1)) * 1024 if m else None,
        "seconds": seconds,
        "stdout": r.stdout[-3000:],
        "stderr": r.stderr[-3000:],
    }


def free_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


LLAMA_CHILD = r"""
import json, sys, time
import edgecpm
t0 = time.perf_counter()
m = edgecpm.load(sys.argv[1], backend="llama.cpp", threads=2)
t1 = time.perf_counter()
ids = m.tokenizer.encode("The capital of France is")
out = m.generate("The capital of France is", max_new_tokens=int(sys.argv[2]), temperature=0.0)
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "generate_s": t2 - t1, "prompt_tokens": len(ids), "text": out}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/root/.cache/edgecpm-8b")
    ap.add_argument("--steps", default="gguf,onnx,llama")
    ap.add_argument("--decode-steps", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    args = ap.parse_args()
    work = Path(args.work)
    ckpt = work / "minicpm4-8b-synthetic"
    steps = args.steps.split(",")
    py = [sys.executable, "-m", "edgecpm"]
    try:
        if not (ckpt / "config.json").exists():
            print(f"building checkpoint in {ckpt} (available memory {free_gib():.1f} GiB)", flush=True)
            t0 = time.perf_counter()
            shutil.rmtree(ckpt, ignore_errors=True)
            build_checkpoint(ckpt)
            print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
        src = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
        bound = 0.3 * src
        print(
            f"source {src / 2**30:.2f} GiB bf16 in {len(list(ckpt.glob('*.safetensors')))} shards; "
            f"bound 0.3 x source = {bound / 2**30:.2f} GiB",
            flush=True,
        )
        rows = []
        exports = {"gguf": ("gguf", "q4_0", work / "out-gguf"), "onnx": ("onnx", "int4", work / "out-onnx")}
        for step in [s for s in steps if s in exports]:
            fmt, quant, out = exports[step]
            shutil.rmtree(out, ignore_errors=True)
            print(f"export {fmt} {quant} (available memory {free_gib():.1f} GiB) ...", flush=True)
            r = timed(
                [
                    *py,
                    "export",
                    str(ckpt),
                    "--format",
                    fmt,
                    "--quant",
                    quant,
                    "--out",
                    str(out),
                    "--json",
                    "--threads",
                    "2",
                ]
            )
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.exists() else 0
            rows.append((fmt, quant, r, size))
            print(
                f"  rc {r['rc']} peak RSS {r['peak_rss'] / 2**30:.2f} GiB ({r['peak_rss'] / bound:.2f} x bound, "
                f"{r['peak_rss'] / src:.3f} x source) in {r['seconds']:.0f} s; output {size / 2**30:.2f} GiB",
                flush=True,
            )
            if r["rc"]:
                print(r["stderr"], flush=True)
        print("\n| export | peak RSS (GiB) | RSS / source | within 0.3 x source | wall time (s) | output (GiB) |")
        print("|---|---|---|---|---|---|")
        for fmt, quant, r, size in rows:
            print(
                f"| {fmt} {quant} | {r['peak_rss'] / 2**30:.2f} | {r['peak_rss'] / src:.3f} | "
                f"{'yes' if r['peak_rss'] <= bound and r['rc'] == 0 else 'NO'} | {r['seconds']:.0f} | "
                f"{size / 2**30:.2f} |",
                flush=True,
            )
        gguf_dir = work / "out-gguf"
        if "llama" in steps and (gguf_dir / "edgecpm.json").exists():
            r = timed([*py, "plan", str(gguf_dir), "--device", "host", "--context", "4096"])
            print(f"\nplan (rc {r['rc']}):\n{r['stdout']}{r['stderr'][-500:] if r['rc'] not in (0, 1) else ''}")
            print(
                f"llama.cpp load + {args.decode_steps} decode steps (available memory {free_gib():.1f} GiB) ...",
                flush=True,
            )
            r = timed([sys.executable, "-c", LLAMA_CHILD, str(gguf_dir), str(args.decode_steps)])
            if r["rc"]:
                print(r["stderr"])
            else:
                res = json.loads(r["stdout"].strip().splitlines()[-1])
                print(
                    f"  load {res['load_s']:.1f} s, prompt {res['prompt_tokens']} tokens + {args.decode_steps} "
                    f"decode steps {res['generate_s']:.1f} s, peak RSS {r['peak_rss'] / 2**30:.2f} GiB "
                    f"(the GGUF file is {sum(f.stat().st_size for f in gguf_dir.glob('*.gguf')) / 2**30:.2f} GiB,"
                    f" mapped); text {res['text']!r}"
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            print(f"deleted {work}")


if __name__ == "__main__":
    main()
