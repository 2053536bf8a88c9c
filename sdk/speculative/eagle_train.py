"""Training an EAGLE head from the target's own hidden states (what examples/train_eagle_head.py runs).

1. `extract`: run the target over text in chunks; keep its final-norm hidden states n_j and its greedy
   prediction y_j = argmax logits_j at every position (the head is trained to agree with the target, not with
   the text, since that is what verification accepts).
2. `train`: teacher-forced pairs (x_{j+1}, n_j) -> g_{j+1}; loss = smooth-L1(norm(g_{j+1}), n_{j+1}) (feature
   regression, as in EAGLE) + `ce_weight` * cross-entropy(head logits of g_{j+1}, y_{j+1}) on `ce_positions`
   random positions per chunk (the full-vocabulary head is most of the cost, so it is sampled). Input features
   get uniform noise of `noise` times their RMS, as EAGLE does, so the head tolerates its own drafted states.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from edgecpm.errors import EdgecpmError
from edgecpm.speculative.eagle import EagleHead


@dataclass
class Features:
    tokens: list[torch.Tensor] = field(default_factory=list)  # [T] per chunk
    states: list[torch.Tensor] = field(default_factory=list)  # [T, H] final-norm states
    labels: list[torch.Tensor] = field(default_factory=list)  # [T] target argmax
    seconds: float = 0.0


@torch.no_grad()  # not inference_mode: its tensors could not enter the training graph
def extract(model, ids: Sequence[int], seq: int = 256, log: Callable[[str], None] | None = None) -> Features:
    """The target's states and greedy predictions over `ids`, in independent chunks of `seq` tokens."""
    if len(ids) < 2 * 4:
        raise EdgecpmError(f"{len(ids)} tokens of text: too few to train a draft head")
    t0 = time.perf_counter()
    out = Features()
    weight = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    chunks = [ids[i : i + seq] for i in range(0, len(ids) - 4, seq)]
    for n, chunk in enumerate(chunks):
        x = torch.as_tensor(list(chunk), dtype=torch.long)[None]
        states = model.hidden_states(x)[0]
        logits = F.linear(states / model.config.logit_scale, weight)
        out.tokens.append(x[0])
        out.states.append(states.float().clone())
        out.labels.append(logits.argmax(-1))
        if log and (n + 1) % 20 == 0:
            log(f"features: {n + 1}/{len(chunks)} chunks, {time.perf_counter() - t0:.0f} s")
    out.seconds = time.perf_counter() - t0
    return out


def _pairs(f: Features, i: int) -> tuple[torch.Tensor, ...]:
    tok, st, lab = f.tokens[i], f.states[i], f.labels[i]
    return tok[1:], st[:-1], st[1:], lab[1:]


def train(
    head: EagleHead,
    feats: Features,
    steps: int = 400,
    lr: float = 1e-3,
    ce_weight: float = 0.5,
    ce_positions: int = 64,
    noise: float = 0.1,
    held_out: int = 1,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train `head` in place on all chunks but the last `held_out`; returns losses and held-out agreement."""
    n_train = len(feats.tokens) - held_out
    if n_train < 1:
        raise EdgecpmError("too little text: no chunk left to train the head on after the held-out one")
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    head.train()
    t0 = time.perf_counter()
    history = []
    for step in range(steps):
        for group in opt.param_groups:  # warm up 5%, then cosine to 10%
            warm = max(1, steps // 20)
            frac = min(1.0, (step + 1) / warm)
            group["lr"] = lr * frac * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        i = int(torch.randint(n_train, (1,), generator=gen))
        tok, feat_in, feat_out, lab = _pairs(feats, i)
        if noise:
            rms = feat_in.pow(2).mean().sqrt()
            feat_in = feat_in + (torch.rand(feat_in.shape, generator=gen) * 2 - 1) * noise * rms
        g = head(tok[None], feat_in[None])[0]
        reg = F.smooth_l1_loss(head.target_norm(g), feat_out)
        pos = torch.randperm(g.shape[0], generator=gen)[:ce_positions]
        ce = F.cross_entropy(head.logits(g[pos]), lab[pos])
        loss = reg + ce_weight * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append((reg.item(), ce.item()))
        if log and (step + 1) % 50 == 0:
            r = sum(h[0] for h in history[-50:]) / 50
            c = sum(h[1] for h in history[-50:]) / 50
            log(
                f"step {step + 1}/{steps}: feature loss {r:.4f}, cross-entropy {c:.3f}, "
                f"{time.perf_counter() - t0:.0f} s"
            )
    head.eval()
    return {
        "steps": steps,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "final_feature_loss": round(sum(h[0] for h in history[-50:]) / min(50, len(history)), 5),
        "final_cross_entropy": round(sum(h[1] for h in history[-50:]) / min(50, len(history)), 4),
        "held_out_top1": held_out_agreement(head, feats, range(n_train, len(feats.tokens))),
    }


@torch.inference_mode()
def held_out_agreement(
    head: EagleHead, feats: Features, chunks: Sequence[int], rows: torch.Tensor | None = None
) -> float | None:
    """Teacher-forced first-step agreement: how often the head's argmax equals the target's on held-out text.

    `rows`: FR-Spec, the head's argmax over those token ids only (a target token outside them never agrees).
    """
    hits = total = 0
    for i in chunks:
        tok, feat_in, _, lab = _pairs(feats, i)
        states = head(tok[None], feat_in[None])[0]
        logits = head.logits(states, None if rows is None else head.head_weight[rows])
        pred = logits.argmax(-1) if rows is None else rows[logits.argmax(-1)]
        hits += int((pred == lab).sum())
        total += int(lab.numel())
    return round(hits / total, 4) if total else None


def agreement_by_rows(
    head: EagleHead, feats: Features, chunks: Sequence[int], order: Sequence[int], sizes: Sequence[int]
) -> dict[str, float | None]:
    """Held-out agreement with the head restricted to the first N ids of a frequency `order`, per N: what the
    planner weighs against each FR-Spec size's cheaper draft step."""
    out = {}
    for n in sizes:
        rows = torch.as_tensor(list(order[:n]), dtype=torch.long)
        out[str(len(rows))] = held_out_agreement(head, feats, chunks, rows)
    return out
