"""Does an InfLLM v2 (sparse) ONNX export cost anything at short context? Below dense_len its layers are dense;
this times the sparse int4 export against the same weights exported with sparse=False, both in onnxruntime
through edgecpm's backend, rounds interleaved (order alternating), medians.

    python benchmarks/onnx_sparse_short_context.py [--prompt 512] [--decode 32] [--rounds 5] [--threads 2]
        [--work DIR]

The checkpoint and exports are long_context.py's (MiniCPM4-0.5B shape, published sparse_config, int4).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import long_context  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=256, help="prompt tokens per call")
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "edgecpm" / "long_context"))
    a = ap.parse_args()
    import numpy as np

    import edgecpm

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    sparse, dense = long_context.checkpoints(work, 32768)
    engines = ("onnx-dense", "onnx-sparse")
    models = {
        e: edgecpm.load(long_context.artifact(e, work, sparse, dense, 32768, a.threads), threads=a.threads)
        for e in engines
    }
    ids = [int(t) for t in np.random.default_rng(0).integers(3, 73000, a.prompt)]
    rows: dict[str, list[tuple[float, float]]] = {e: [] for e in engines}
    for r in range(a.rounds):
        for e in engines if r % 2 == 0 else engines[::-1]:
            b = models[e].backend
            t = time.perf_counter()
            logits = b.prefill(ids[: a.chunk])
            for i in range(a.chunk, a.prompt, a.chunk):
                logits = b.decode(ids[i : i + a.chunk])[-1]
            prefill = time.perf_counter() - t
            tok = int(np.argmax(logits))
            t = time.perf_counter()
            for _ in range(a.decode):
                tok = int(np.argmax(b.decode([tok])[-1]))
            rows[e].append((a.prompt / prefill, a.decode / (time.perf_counter() - t)))
    med = {e: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for e, v in rows.items()}
    print("| export | prefill tok/s | decode tok/s |")
    print("|---|---|---|")
    for e in engines:
        print(f"| {e} | {med[e][0]:.1f} | {med[e][1]:.2f} |")
    p, d = (med["onnx-sparse"][i] / med["onnx-dense"][i] for i in (0, 1))
    print(f"sparse / dense: prefill {p:.2f}, decode {d:.2f} ({a.prompt}-token prompt, {a.rounds} rounds)")


if __name__ == "__main__":
    main()
