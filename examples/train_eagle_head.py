"""Train an EAGLE-style draft head for a model from its own hidden states, on CPU, and store it beside the model.

The target (default: the bundled SmolLM2-135M, its Q4_1 GGUF weights dequantized into the torch reference)
continues prompts taken from the text (batched greedy decoding, some sampled: what speculation will draft) and
runs teacher-forced over natural text and over "repeat this passage" chats; the head (one decoder layer over the
target's final-norm hidden state and the next token's embedding, reusing the target's embedding, final norm and
output head) learns the target's next hidden state and its next-token distribution, unrolled over `--depth`
draft steps that feed the head its own predictions (edgecpm.speculative.eagle_train). Usage:

    python examples/train_eagle_head.py --text wikitext2-valid.txt            # head beside the bundled model
    python examples/train_eagle_head.py MODEL --text my.txt --prompts 512 --steps 1500 --out DIR/x.eagle.json

Then: `edgecpm generate MODEL --backend torch --draft eagle` (add FR-Spec with `edgecpm freq-table` and
`--draft eagle+fr`). Train on text other than what you measure on (WikiText-2: valid for training, test for
the benchmark). The held-out agreement it stores is measured on the target's greedy continuations of prompts
from the last tenth of the text, which no training prompt comes from. Threads default to 2.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import edgecpm
from edgecpm.speculative.eagle import EagleHead, head_path
from edgecpm.speculative.eagle_data import continuations, merge, prompt_windows, repeat_sequences
from edgecpm.speculative.eagle_train import agreement_by_rows, depth_agreement, extract, extract_sequences, train
from edgecpm.speculative.frspec import build_table, count_tokens

DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "wikitext2_test_excerpt.txt"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None, help="target model (default: bundled SmolLM2-135M)")
    ap.add_argument("--text", default=str(DEFAULT_TEXT), help="training text (UTF-8)")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens of natural text to train on as is")
    ap.add_argument("--seq", type=int, default=128, help="chunk length")
    ap.add_argument("--prompts", type=int, default=96, help="prompts the target continues (0: none)")
    ap.add_argument("--prompt-tokens", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=80, help="tokens the target generates per prompt")
    ap.add_argument("--sampled", type=float, default=0.25, help="share of continuations sampled, not greedy")
    ap.add_argument("--temperature", type=float, default=0.8, help="for the sampled continuations")
    ap.add_argument("--held-out", type=int, default=None, help="held-out greedy continuations (default 1/8)")
    ap.add_argument("--repeat", type=int, default=16, help="'repeat this passage' chats (input-grounded)")
    ap.add_argument("--gen-batch", type=int, default=16, help="continuations decoded at once")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps")
    ap.add_argument("--minutes", type=float, default=None, help="cut --steps to fit this training time")
    ap.add_argument("--batch", type=int, default=4, help="chunks per step")
    ap.add_argument("--depth", type=int, default=3, help="draft steps unrolled in training (1: teacher-forced)")
    ap.add_argument("--hard", action="store_true", help="cross-entropy to the target's argmax, not its softmax")
    ap.add_argument("--train-rows", type=int, default=8192, help="output-head rows in the loss (0: all)")
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
    all_ids = target.tokenizer.encode(text)
    split = len(all_ids) * 9 // 10  # prompts of held-out continuations come from the last tenth only
    ids = all_ids[: min(a.tokens, split)]
    print(f"target {target.path.name}: {model.config.num_layers} layers, {len(all_ids)} tokens of {Path(a.text).name}")
    parts = [extract(model, ids, a.seq, log=print)]
    n_sampled = round(a.prompts * a.sampled)
    n_greedy = a.prompts - n_sampled
    n_held = a.held_out if a.held_out is not None else max(1, a.prompts // 8) if a.prompts else 0
    window = a.prompt_tokens
    gen = dict(new_tokens=a.new_tokens, batch=a.gen_batch, log=print)
    if n_greedy:
        parts.append(continuations(model, prompt_windows(all_ids[:split], n_greedy, window, a.seed), **gen))
    if n_sampled:
        prompts = prompt_windows(all_ids[:split], n_sampled, window, a.seed + 1)
        parts.append(continuations(model, prompts, temperature=a.temperature, seed=a.seed, kind="sampled", **gen))
    if a.repeat:
        paras = [p.strip() for p in text.split("\n") if len(p.strip()) > 400][: a.repeat]
        seqs = repeat_sequences(target, [p[:900].rsplit(" ", 1)[0] for p in paras])
        parts.append(extract_sequences(model, seqs, a.seq, kind="repeat"))
    if n_held:  # the last chunks: held out
        held_prompts = prompt_windows(all_ids[split:], n_held, min(window, len(all_ids) - split - 1), a.seed + 2)
        parts.append(continuations(model, held_prompts, **gen))
        held_out = n_held
    else:
        held_out = max(1, len(parts[0].tokens) // 10)
    feats = merge(parts)
    train_kinds = feats.kinds[: len(feats.kinds) - held_out]
    kinds = {k: train_kinds.count(k) for k in dict.fromkeys(train_kinds)}
    print(f"features: {len(feats.tokens)} chunks in {feats.seconds:.0f} s: training {kinds}, {held_out} held out")
    counts = count_tokens(
        [int(t) for c in feats.tokens[: len(feats.tokens) - held_out] for t in c], model.config.vocab_size
    )
    text_order = build_table(count_tokens(all_ids, model.config.vocab_size), model.config.vocab_size)["ids"]
    rows = None
    if 0 < a.train_rows < model.config.vocab_size:  # the training chunks' most frequent tokens
        rows = torch.as_tensor(build_table(counts, a.train_rows)["ids"], dtype=torch.long)
    head = EagleHead.for_model(model)
    result = train(
        head,
        feats,
        a.steps,
        a.lr,
        a.ce_weight,
        held_out=held_out,
        seed=a.seed,
        log=print,
        batch=a.batch,
        depth=a.depth,
        soft=not a.hard,
        rows=rows,
        max_seconds=a.minutes * 60 if a.minutes else None,
    )
    out = Path(a.out) if a.out else head_path(target.path)
    info = {
        "trained_on": Path(a.text).name,
        "train_tokens": len(ids),
        "train_chunks": {k: v for k, v in kinds.items()},
        "continuations": {
            "prompts": a.prompts,
            "prompt_tokens": window,
            "new_tokens": a.new_tokens,
            "sampled": n_sampled,
            "temperature": a.temperature,
        },
        "held_out_on": "greedy continuations" if n_held else "text",
        "held_out_chunks": held_out,
        "train_rows": None if rows is None else len(rows),
        "feature_seconds": round(feats.seconds, 1),
        **result,
    }
    chunks = range(len(feats.tokens) - held_out, len(feats.tokens))
    depth = {"full": depth_agreement(head, feats, chunks, None, 3)}
    sizes = [int(x) for x in a.fr_sizes.split(",") if x.strip()]
    if sizes:  # FR-Spec: the training text's most frequent tokens, as `edgecpm freq-table` would order them
        info["held_out_top1_fr"] = agreement_by_rows(head, feats, chunks, text_order, sizes)
        print(f"held-out agreement with FR-Spec rows: {info['held_out_top1_fr']}")
        for n in sizes:
            r = torch.as_tensor(text_order[:n], dtype=torch.long)
            depth[str(len(r))] = depth_agreement(head, feats, chunks, r, 3)
    info["held_out_by_depth"] = depth
    print(f"held-out agreement at draft depth 1, 2, 3 (given the earlier drafts were right): {depth}")
    head.save(out, info)
    print(
        f"held-out first-step agreement with the target: {result['held_out_top1']}; "
        f"wrote {out} and {out.with_suffix('.safetensors').name} in {time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
