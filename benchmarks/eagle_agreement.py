"""How often an EAGLE head's first draft equals the target's greedy token, teacher-forced, on text passages and
on the target's own greedy continuation of each (what speculation drafts). Separates a weak head from a bug in
the draft loop: the first-step acceptance of `benchmarks/speculative.py` should match the continuation figure.

Usage: python benchmarks/eagle_agreement.py --head HEAD.json --text wikitext2-test.txt [--passages 2] [--tokens 32]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import edgecpm
from edgecpm.generation import Generator, SamplingParams
from edgecpm.speculative.eagle import EagleHead


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--head", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--passages", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(1)
    m = edgecpm.load(a.model, backend="torch", threads=1)
    model = m.backend.model
    head, _ = EagleHead.load(a.head, m.config)
    out_head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    head.attach(model.embed_tokens.weight, model.norm.weight, out_head)
    text = open(a.text, encoding="utf-8").read()
    paras = [p.strip() for p in text.split("\n") if len(p.strip()) > 900][: a.passages]
    for p in paras:  # the passages benchmarks/speculative.py uses
        ids = m.tokenizer.encode(p[:900].rsplit(" ", 1)[0])
        full = ids + Generator(m.backend, m.tokenizer).run(ids, a.tokens, SamplingParams()).token_ids
        with torch.no_grad():
            states = model.hidden_states(torch.tensor([full]))[0]
            target = F.linear(states / m.config.logit_scale, out_head).argmax(-1)
            pred = head.logits(head(torch.tensor([full[1:]]), states[:-1][None])[0]).argmax(-1)
        ok = (pred == target[1:]).float()
        n = len(ids)
        print(f"passage agreement {ok[: n - 1].mean():.3f}, greedy continuation {ok[n - 1 :].mean():.3f}")


if __name__ == "__main__":
    main()
