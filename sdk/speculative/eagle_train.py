"""Training an EAGLE head from the target's own hidden states (what examples/train_eagle_head.py runs).

1. Features: the target's final-norm hidden states n_j and greedy predictions y_j = argmax logits_j at every
   position of each chunk (the head is trained to agree with the target, not with the text, since that is what
   verification accepts): `extract` over natural text, `eagle_data.continuations` over the target's own output.
2. `train`: pairs (x_{j+1}, n_j) -> g_{j+1}; loss = smooth-L1(norm(g_{j+1}), n_{j+1}) (feature regression, as in
   EAGLE) + `ce_weight` * cross-entropy of the head's logits against the target's next-token distribution
   (`soft`: softmax of the target's own logits, i.e. distillation; else its argmax y_{j+1}) on `ce_positions`
   random positions per chunk (the output head is most of the cost, so it is sampled; `rows` restricts it to
   FR-Spec rows). Input features get uniform noise of `noise` times their RMS, as EAGLE does.
3. `depth` > 1 unrolls drafting during training ("training-time test", as HASS / EAGLE-3 describe it): level s
   feeds the head its own level s-1 prediction, norm(g), as the feature, and each query sees exactly the keys it
   would see while drafting: the target-fed pairs up to where its draft chain started plus its own chain's
   earlier drafted pairs (an attention mask over the levels' keys). Every level is scored against the target at
   its position, weighted `depth_decay`^(s-1), so drafts 2..k learn from the states they will actually get.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from edgecpm.errors import EdgecpmError
from edgecpm.kv_cache import KVCache
from edgecpm.speculative.eagle import EagleHead


@dataclass
class Features:
    tokens: list[torch.Tensor] = field(default_factory=list)  # [T] per chunk
    states: list[torch.Tensor] = field(default_factory=list)  # [T, H] final-norm states
    labels: list[torch.Tensor] = field(default_factory=list)  # [T] target argmax
    starts: list[int] = field(default_factory=list)  # first scored label position (the generated part)
    kinds: list[str] = field(default_factory=list)  # "text", "greedy", "sampled", "repeat"
    seconds: float = 0.0


@torch.no_grad()  # not inference_mode: its tensors could not enter the training graph
def extract(model, ids: Sequence[int], seq: int = 256, log: Callable[[str], None] | None = None) -> Features:
    """The target's states and greedy predictions over `ids`, in independent chunks of `seq` tokens."""
    if len(ids) < 2 * 4:
        raise EdgecpmError(f"{len(ids)} tokens of text: too few to train a draft head")
    chunks = [list(ids[i : i + seq]) for i in range(0, len(ids) - 4, seq)]
    return extract_sequences(model, chunks, log=log)


@torch.no_grad()
def extract_sequences(
    model, seqs: Sequence[Sequence[int]], seq: int | None = None, kind: str = "text", log=None
) -> Features:
    """Teacher-forced states over each sequence (one forward each), cut into chunks of `seq` tokens."""
    t0 = time.perf_counter()
    out = Features()
    weight = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    for n, s in enumerate(seqs):
        x = torch.as_tensor(list(s), dtype=torch.long)[None]
        states = model.hidden_states(x)[0].float()
        labels = F.linear(states / model.config.logit_scale, weight).argmax(-1)
        step = seq or len(s)
        for i in range(0, len(s) - 4, step):
            out.tokens.append(x[0, i : i + step])
            out.states.append(states[i : i + step].clone())
            out.labels.append(labels[i : i + step])
            out.starts.append(0)
            out.kinds.append(kind)
        if log and (n + 1) % 20 == 0:
            log(f"features: {n + 1}/{len(seqs)} sequences, {time.perf_counter() - t0:.0f} s")
    out.seconds = time.perf_counter() - t0
    return out


def _batch(f: Features, idx: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Pairs of the chunks `idx`, cropped to their shortest: tokens x_{j+1}, features n_j, next n_{j+1}, y_{j+1}."""
    t = min(len(f.tokens[i]) for i in idx)
    tok = torch.stack([f.tokens[i][:t] for i in idx])
    st = torch.stack([f.states[i][:t] for i in idx])
    lab = torch.stack([f.labels[i][:t] for i in idx])
    return tok[:, 1:], st[:, :-1], st[:, 1:], lab[:, 1:]


def level_mask(t: int, s: int) -> torch.Tensor:
    """Keys a level-s query at position p sees, over the cached keys of levels 1..s-1 and its own level:
    level 1 (the target-fed pairs) up to p-s+1, where its draft chain started; level r in 2..s at p-s+r only
    (its chain's own earlier drafted pairs, and itself). Level 1 is the causal mask."""
    p = torch.arange(t)[:, None]
    q = torch.arange(t)[None, :]
    blocks = [q <= p - s + 1] + [q == p - s + r for r in range(2, s + 1)]
    return torch.cat(blocks, dim=1)


def unrolled(
    head: EagleHead, tokens: torch.Tensor, feats: torch.Tensor, depth: int, mask_cache: dict | None = None
) -> list[torch.Tensor]:
    """Predicted states g_s `[B, T, H]` of every draft level s = 1..depth: level 1 reads the target's states,
    level s the normed level s-1 prediction of the previous position (what drafting feeds back)."""
    b, t = tokens.shape
    cache = KVCache(head.config, batch=b, dtype=head.fc.weight.dtype)
    cos, sin = head.rotary.cos_sin(torch.arange(t), t)
    e = F.embedding(tokens, head.embed_weight) * head.config.scale_emb
    layer = head.layer
    out = []
    f = feats
    for s in range(1, depth + 1):
        key = (t, s)
        mask = (mask_cache or {}).get(key)
        if mask is None:
            mask = level_mask(t, s)
            if mask_cache is not None:
                mask_cache[key] = mask
        x = head.fc(torch.cat([e, f.to(e.dtype)], dim=-1))
        x = x + layer.self_attn(layer.input_layernorm(x), cos, sin, cache, 0, tree_mask=mask)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        cache.advance(t)
        out.append(x)
        # the next level's feature at p is this level's prediction made at p-1 (p = 0 has none: masked out)
        f = torch.cat([feats[:, :1], head.target_norm(x[:, :-1])], dim=1)
    return out


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
    batch: int = 1,
    depth: int = 1,
    depth_decay: float = 0.8,
    soft: bool = False,
    rows: torch.Tensor | None = None,
    max_seconds: float | None = None,
) -> dict:
    """Train `head` in place on all chunks but the last `held_out`; returns losses and held-out agreement.

    `batch` chunks per step (cropped to the shortest), `depth` unrolled draft levels, `soft` distillation to
    the target's distribution, `rows`: the cross-entropy over those output-head rows only (FR-Spec)."""
    n_train = len(feats.tokens) - held_out
    if n_train < 1:
        raise EdgecpmError("too little text: no chunk left to train the head on after the held-out one")
    if depth < 1:
        raise EdgecpmError(f"draft depth {depth}: needs at least 1")
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    w_rows = head.head_weight if rows is None else head.head_weight[rows]
    scale = head.config.logit_scale
    if rows is not None:  # hard labels outside the rows cannot be predicted: index into the rows, or -100
        where = torch.full((head.target_config.vocab_size,), -100, dtype=torch.long)
        where[rows] = torch.arange(len(rows))
    head.train()
    t0 = time.perf_counter()
    history = []
    masks: dict = {}
    step, max_steps = 0, steps
    while step < steps:
        if max_seconds and step >= 10 and step % 10 == 0:  # re-estimated as the machine's load changes
            per_step = (time.perf_counter() - t0) / step
            left = max_seconds - (time.perf_counter() - t0)
            steps = max(step + 1, min(max_steps, step + int(left / per_step)))
        for group in opt.param_groups:  # warm up 5%, then cosine to 10%
            warm = max(1, steps // 20)
            frac = min(1.0, (step + 1) / warm)
            group["lr"] = lr * frac * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        idx = torch.randint(n_train, (batch,), generator=gen).tolist()
        tok, feat_in, feat_out, lab = _batch(feats, idx)
        if noise:
            rms = feat_in.pow(2).mean().sqrt()
            feat_in = feat_in + (torch.rand(feat_in.shape, generator=gen) * 2 - 1) * noise * rms
        levels = unrolled(head, tok, feat_in, depth, masks)
        reg_total = ce_total = 0.0
        loss = 0.0
        for s, g in enumerate(levels, start=1):
            g, target, y = g[:, s - 1 :], feat_out[:, s - 1 :], lab[:, s - 1 :]  # level s scores p >= s-1
            if g.shape[1] == 0:
                continue
            reg = F.smooth_l1_loss(head.target_norm(g), target)
            n_pos = min(ce_positions, g.shape[1])
            pos = torch.stack([torch.randperm(g.shape[1], generator=gen)[:n_pos] for _ in range(g.shape[0])])
            pick = torch.gather(g, 1, pos[..., None].expand(-1, -1, g.shape[-1])).reshape(-1, g.shape[-1])
            logits = head.logits(pick, w_rows)
            if soft:
                tgt = torch.gather(target, 1, pos[..., None].expand(-1, -1, target.shape[-1]))
                p = torch.softmax(F.linear(tgt.reshape(-1, tgt.shape[-1]) / scale, w_rows).float(), -1)
                ce = -(p * torch.log_softmax(logits, -1)).sum(-1).mean()
            else:
                yy = torch.gather(y, 1, pos).reshape(-1)
                ce = F.cross_entropy(logits, yy if rows is None else where[yy], ignore_index=-100)
            weight = depth_decay ** (s - 1)
            loss = loss + weight * (reg + ce_weight * ce)
            reg_total += reg.item() / len(levels)
            ce_total += ce.item() / len(levels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append((reg_total, ce_total))
        if log and (step + 1) % 50 == 0:
            r = sum(h[0] for h in history[-50:]) / 50
            c = sum(h[1] for h in history[-50:]) / 50
            log(
                f"step {step + 1}/{steps}: feature loss {r:.4f}, cross-entropy {c:.3f}, "
                f"{time.perf_counter() - t0:.0f} s"
            )
        step += 1
    head.eval()
    return {
        "steps": steps,
        "batch_chunks": batch,
        "train_depth": depth,
        "soft_targets": soft,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "final_feature_loss": round(sum(h[0] for h in history[-50:]) / min(50, len(history)), 5),
        "final_cross_entropy": round(sum(h[1] for h in history[-50:]) / min(50, len(history)), 4),
        "held_out_top1": held_out_agreement(head, feats, range(n_train, len(feats.tokens))),
    }


def _chunk(f: Features, i: int) -> tuple[torch.Tensor, ...]:
    tok, st, lab = f.tokens[i], f.states[i], f.labels[i]
    return tok[1:], st[:-1], lab[1:], (f.starts[i] if i < len(f.starts) else 0)


@torch.inference_mode()
def held_out_agreement(
    head: EagleHead, feats: Features, chunks: Sequence[int], rows: torch.Tensor | None = None
) -> float | None:
    """Teacher-forced first-step agreement: how often the head's argmax equals the target's on held-out chunks
    (from each chunk's start: the generated part of a continuation, all of a text chunk).

    `rows`: FR-Spec, the head's argmax over those token ids only (a target token outside them never agrees).
    """
    return depth_agreement(head, feats, chunks, rows, 1)[0]


@torch.inference_mode()
def depth_agreement(
    head: EagleHead, feats: Features, chunks: Sequence[int], rows: torch.Tensor | None = None, depth: int = 3
) -> list[float | None]:
    """Per draft depth d = 1..`depth`: of the draft chains whose first d-1 drafts equal the target's greedy
    tokens, how often draft d does too (the chance verification accepts draft d given the earlier ones: the
    per-token acceptance of a k-token chain at its d-th token). Chains start where a verify would leave the
    head, at every position from the chunk's start; given the earlier drafts were right, their inputs are the
    target's tokens, so the unrolled levels are exactly what the draft loop computes."""
    hits = [0] * depth
    tried = [0] * depth
    for i in chunks:
        tok, feat_in, lab, start = _chunk(feats, i)
        t = tok.shape[0]
        levels = unrolled(head, tok[None], feat_in[None], depth)
        match = []
        for g in levels:
            logits = head.logits(g[0], None if rows is None else head.head_weight[rows])
            pred = logits.argmax(-1) if rows is None else rows[logits.argmax(-1)]
            match.append(pred == lab)  # level s at position p drafts the token after x_{p+1}
        # chain starting at pair c: level s at position c+s-1; scored if its labels lie from the start on
        first = max(0, start - 1)
        alive = torch.ones(max(0, t - first), dtype=torch.bool)
        for d in range(depth):
            n = t - first - d
            if n <= 0:
                break
            ok = match[d][first + d : first + d + n]
            alive = alive[:n]
            tried[d] += int(alive.sum())
            hits[d] += int((alive & ok).sum())
            alive = alive & ok
    return [round(h / n, 4) if n else None for h, n in zip(hits, tried, strict=True)]


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
