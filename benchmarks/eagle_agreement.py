"""How often an EAGLE head's drafts equal the target's greedy tokens, teacher-forced, on text passages and on
the target's own greedy continuation of each (what speculation drafts), per draft depth. Separates a weak head
from a bug in the draft loop: the first-step acceptance of `benchmarks/speculative.py` should match the
continuation figure at depth 1, and a k-token chain's acceptance follows the depths 1..k.

Depth d: of the chains whose drafts 1..d-1 equal the target's tokens, the share whose draft d does too (the head
fed its own predicted states, as `edgecpm.speculative.eagle_train.depth_agreement` unrolls it).

Usage: python benchmarks/eagle_agreement.py --head HEAD.json --text wikitext2-test.txt [--passages 3]
       [--tokens 48] [--freq FREQ.json --fr-sizes 2048,4096]
"""

from __future__ import annotations

import argparse

import torch

import edgecpm
from edgecpm.generation import Generator, SamplingParams
from edgecpm.speculative.eagle import EagleHead
from edgecpm.speculative.eagle_train import Features, depth_agreement


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--head", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--passages", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--freq", default=None, help="FR-Spec table (`edgecpm freq-table`): also per --fr-sizes")
    ap.add_argument("--fr-sizes", default="2048,4096")
    a = ap.parse_args()
    torch.set_num_threads(1)
    m = edgecpm.load(a.model, backend="torch", threads=1)
    model = m.backend.model
    head, _ = EagleHead.load(a.head, m.config)
    out_head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    head.attach(model.embed_tokens.weight, model.norm.weight, out_head)
    variants = {"full": None}
    if a.freq:
        from edgecpm.speculative.frspec import read_ids

        for n in (int(x) for x in a.fr_sizes.split(",") if x):
            variants[f"fr{n}"] = torch.as_tensor(read_ids(a.freq, m.config.vocab_size, n), dtype=torch.long)
    text = open(a.text, encoding="utf-8").read()
    paras = [p.strip() for p in text.split("\n") if len(p.strip()) > 900][: a.passages]
    totals: dict[str, list[list]] = {k: [] for k in variants}
    for p in paras:  # the passages benchmarks/speculative.py uses
        ids = m.tokenizer.encode(p[:900].rsplit(" ", 1)[0])
        full = ids + Generator(m.backend, m.tokenizer).run(ids, a.tokens, SamplingParams()).token_ids
        with torch.no_grad():
            states = model.hidden_states(torch.tensor([full]))[0]
            labels = torch.nn.functional.linear(states / m.config.logit_scale, out_head).argmax(-1)
        f = Features([torch.tensor(full)], [states], [labels], [len(ids)], ["greedy"])
        text_f = Features([torch.tensor(ids)], [states[: len(ids)]], [labels[: len(ids)]], [0], ["text"])
        line = []
        for name, rows in variants.items():
            cont = depth_agreement(head, f, [0], rows, a.depth)
            passage = depth_agreement(head, text_f, [0], rows, 1)[0]
            totals[name].append(cont)
            line.append(f"{name}: passage {passage:.3f}, continuation by depth {cont}")
        print("; ".join(line))
    for name, rs in totals.items():
        mean = []
        for d in range(a.depth):
            got = [r[d] for r in rs if r[d] is not None]
            mean.append(round(sum(got) / len(got), 3) if got else None)
        print(f"{name}: mean over passages of the continuation agreement by depth {mean}")


if __name__ == "__main__":
    main()
