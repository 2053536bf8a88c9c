"""Quantization quality of the ExecuTorch exporter beside ExecuTorch's own Llama export, on real weights.

SmolLM2-135M-Instruct (the bundled default model; Llama architecture, hidden 576 which is not a multiple of
128) is exported by edgecpm (fp32 / 8da4w / 8da8w) and by ExecuTorch's `export_llm` (8da4w, same group size,
HQQ as both default). Every program is run by `executorch.runtime` over the same >= 512 positions of WikiText-2
text, one token per call, and compared with the fp32 torch reference `Model` on the same weights: mean KL
divergence KL(p_ref || p_program) and top-1 agreement.

    python benchmarks/executorch_kl.py --positions 512 --group-size 32 [--work DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from executorch_peer import export_peer, write_llama_checkpoint  # noqa: E402

import edgecpm  # noqa: E402
from edgecpm.backends.executorch_ops import import_runtime_ops  # noqa: E402
from edgecpm.default_model import default_model_path  # noqa: E402
from edgecpm.exporters.registry import run_export  # noqa: E402
from edgecpm.weights import open_checkpoint  # noqa: E402

TEXT = Path(__file__).parent.parent / "tests" / "data" / "wikitext2_test_excerpt.txt"


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    lp, lq = log_softmax(ref), log_softmax(got)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {"mean_kl": float(kl.mean()), "top1": float((ref.argmax(-1) == got.argmax(-1)).mean())}


def run_pte_stepwise(pte: Path, ids: list[int]) -> np.ndarray:
    from executorch.runtime import Runtime

    import_runtime_ops()
    method = Runtime.get().load_program(pte).load_method("forward")
    rows = []
    for pos, tok in enumerate(ids):
        out = method.execute([torch.tensor([[tok]]), torch.tensor([pos])])[0]
        rows.append(out.reshape(-1, out.shape[-1])[-1].float().numpy())
    return np.stack(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--quants", default="8da4w,8da8w,fp32")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--work", default="/tmp/edgecpm-et-kl")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = default_model_path()
    ref_model = edgecpm.load(src, backend="torch")
    ids = ref_model.tokenizer.encode(TEXT.read_text(encoding="utf-8"))[: args.positions]
    assert len(ids) == args.positions, len(ids)
    ref = ref_model.logits(ids)
    config = ref_model.config
    ctx = args.positions + 8
    results = {}
    for quant in [q for q in args.quants.split(",") if q]:
        out = work / f"edgecpm-{quant}-g{args.group_size}"
        t = time.time()
        run_export(
            src,
            "executorch",
            out,
            quant=quant,
            group_size=args.group_size,
            max_seq_len=64,
            max_context_len=ctx,
            progress=False,
        )
        export_s = time.time() - t
        results[f"edgecpm {quant}"] = {
            **compare(ref, run_pte_stepwise(out / "model.pte", ids)),
            "pte_mb": (out / "model.pte").stat().st_size / 1e6,
            "export_s": export_s,
        }
        print(f"edgecpm {quant}", results[f"edgecpm {quant}"], flush=True)
    if not args.no_peer:
        _, source = open_checkpoint(src)
        ckpt, params = write_llama_checkpoint(config, source, work / "peer")
        pte = work / "peer" / f"peer-8da4w-g{args.group_size}.pte"
        t = time.time()
        export_peer(
            ckpt, params, pte, "8da4w", args.group_size, 64, ctx, config.bos_token_id or 0, list(config.eos_token_ids)
        )
        results["executorch export_llm 8da4w"] = {
            **compare(ref, run_pte_stepwise(pte, ids)),
            "pte_mb": pte.stat().st_size / 1e6,
            "export_s": time.time() - t,
        }
        print("peer 8da4w", results["executorch export_llm 8da4w"], flush=True)
    summary = {
        "model": str(src),
        "positions": args.positions,
        "group_size": args.group_size,
        "text": str(TEXT.name),
        "results": results,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
