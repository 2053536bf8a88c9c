"""Export one checkpoint to GGUF, ONNX and ExecuTorch, run each on its own runtime, compare the logits.

Every artifact gets the same tokens; its logits are set beside the torch reference model's (max abs
difference, top-1 agreement). Without a model argument it uses a tiny random checkpoint (made in a second
by edgecpm.synthetic), since exporting a full model to all three formats takes minutes.

    python examples/export_compare.py [path/to/MiniCPM4-0.5B] --out exports/
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import edgecpm

FORMATS = {"gguf": "f32", "onnx": "fp32", "executorch": "fp32"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None, help="HF checkpoint dir (default: a tiny random checkpoint)")
    ap.add_argument("--out", default=None, help="where the artifacts go (default: a temporary folder)")
    ap.add_argument("--text", default="The quick brown fox jumps over the lazy dog. " * 3)
    args = ap.parse_args(argv)

    if args.model is None:
        from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

        args.model = cached_checkpoint(SyntheticSpec(seed=7))
    reference = edgecpm.load(args.model, backend="torch")
    ids = reference.tokenizer.encode(args.text)[:48]
    want = reference.logits(ids)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        print(f"{'format':<11} {'quant':<5} {'runtime':<12} {'max |diff|':>11} {'top-1 agree':>12}")
        for fmt, quant in FORMATS.items():
            artifact = edgecpm.export(args.model, format=fmt, quant=quant, out=out / fmt, progress=False)
            model = edgecpm.load(artifact.path)
            got = model.logits(ids)
            diff = float(np.abs(got - want).max())
            agree = float(np.mean(got.argmax(-1) == want.argmax(-1)))
            print(f"{fmt:<11} {quant:<5} {model.backend.name:<12} {diff:>11.2e} {agree:>12.3f}")
            close = getattr(model.backend, "close", None)
            if close is not None:
                close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
