"""Train an EAGLE-style draft head for a model from its own hidden states, on CPU, and store it beside the model.

The target (default: the bundled SmolLM2-135M, its Q4_1 GGUF weights dequantized into the torch reference) runs
over the text once; the head (one decoder layer over the target's final-norm hidden state and the next token's
embedding, reusing the target's embedding, final norm and output head) learns to predict the target's next
hidden state and next greedy token (edgecpm.speculative.eagle_train). Usage:

    python examples/train_eagle_head.py --text wikitext2-valid.txt            # head beside the bundled model
    python examples/train_eagle_head.py MODEL --text my.txt --tokens 24000 --steps 400 --out DIR/x.eagle.json

Then: `edgecpm generate MODEL --backend torch --draft eagle` (add FR-Spec with `edgecpm freq-table` and
`--draft eagle+fr`). Train on text other than what you measure on (WikiText-2: valid for training, test for
the benchmark). Threads default to 2.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import edgecpm
from edgecpm.speculative.eagle import EagleHead, head_path
from edgecpm.speculative.eagle_train import agreement_by_rows, extract, train
from edgecpm.speculative.frspec import build_table, count_tokens

DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "wikitext2_test_excerpt.txt"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None, help="target model (default: bundled SmolLM2-135M)")
    ap.add_argument("--text", default=str(DEFAULT_TEXT), help="training text (UTF-8)")
    ap.add_argument("--tokens", type=int, default=24000, help="tokens of the text to use")
    ap.add_argument("--seq", type=int, default=256, help="chunk length")
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps (one chunk each)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ce-weight", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="head .json path (default: beside the model)")
    ap.add_argument(
        "--fr-sizes",
        default="2048,4096,8192,16384",
        help="FR-Spec sizes to measure the held-out agreement at (the planner weighs each; '' for none)",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    target = edgecpm.load(a.model, backend="torch", threads=a.threads)
    model = target.backend.model
    text = Path(a.text).read_text(encoding="utf-8")
    ids = target.tokenizer.encode(text[: a.tokens * 8])[: a.tokens]
    print(f"target {target.path.name}: {model.config.num_layers} layers, {len(ids)} tokens of {Path(a.text).name}")
    feats = extract(model, ids, a.seq, log=print)
    print(f"features: {len(feats.tokens)} chunks in {feats.seconds:.0f} s")
    head = EagleHead.for_model(model)
    held_out = max(1, len(feats.tokens) // 10)
    result = train(head, feats, a.steps, a.lr, a.ce_weight, held_out=held_out, seed=a.seed, log=print)
    out = Path(a.out) if a.out else head_path(target.path)
    info = {
        "trained_on": Path(a.text).name,
        "train_tokens": len(ids),
        "feature_seconds": round(feats.seconds, 1),
        **result,
    }
    sizes = [int(x) for x in a.fr_sizes.split(",") if x.strip()]
    if sizes:  # FR-Spec: the training text's most frequent tokens, as `edgecpm freq-table` would order them
        order = build_table(count_tokens(ids, model.config.vocab_size), max(sizes))["ids"]
        chunks = range(len(feats.tokens) - held_out, len(feats.tokens))
        info["held_out_top1_fr"] = agreement_by_rows(head, feats, chunks, order, sizes)
        print(f"held-out agreement with FR-Spec rows: {info['held_out_top1_fr']}")
    head.save(out, info)
    print(
        f"held-out first-step agreement with the target: {result['held_out_top1']}; "
        f"wrote {out} and {out.with_suffix('.safetensors').name} in {time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
