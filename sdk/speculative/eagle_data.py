"""Training sequences for an EAGLE head: the target's own continuations, plus natural text.

A draft head is judged on what speculation drafts: the target's own output. So besides teacher-forced natural
text (`eagle_train.extract`), the head trains on continuations the target itself generates from prompts of the
training text: `continuations` decodes a batch of equal-length prompts at once with one batched KV cache
(greedy, or sampled at a temperature), keeping the final-norm state of every position as it goes, so the
features cost no second pass. Each chunk records where its generated part starts (`Features.starts`): the
held-out agreement is scored there only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from edgecpm.errors import EdgecpmError
from edgecpm.speculative.eagle_train import Features


def output_weight(model) -> torch.Tensor:
    return model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight


def prompt_windows(ids: Sequence[int], n: int, length: int, seed: int = 0) -> torch.Tensor:
    """`n` windows of `length` tokens at random offsets of `ids` (the prompts to continue), `[n, length]`."""
    if len(ids) < length + 1:
        raise EdgecpmError(f"{len(ids)} tokens of text: too few for prompts of {length} tokens")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(ids) - length, (n,), generator=gen)
    t = torch.as_tensor(list(ids), dtype=torch.long)
    return torch.stack([t[s : s + length] for s in starts.tolist()])


@torch.no_grad()
def continuations(
    model,
    prompts: torch.Tensor,
    new_tokens: int,
    batch: int = 16,
    temperature: float = 0.0,
    seed: int = 0,
    kind: str = "greedy",
    log: Callable[[str], None] | None = None,
) -> Features:
    """The target's continuation of each prompt row (`[N, P]`), decoded `batch` rows at a time: chunks of
    P + `new_tokens` tokens with the target's final-norm states and argmax at every position; start = P."""
    gen = torch.Generator().manual_seed(seed)
    weight = output_weight(model)
    scale = model.config.logit_scale
    out = Features()
    t0 = time.perf_counter()
    for b0 in range(0, prompts.shape[0], batch):
        x = prompts[b0 : b0 + batch]
        cache = model.new_cache(batch=x.shape[0])
        states = [model.hidden_states(x, cache)]
        toks = [x]
        for _ in range(new_tokens):
            logits = F.linear(states[-1][:, -1] / scale, weight).float()
            if temperature > 0:
                nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            toks.append(nxt)
            states.append(model.hidden_states(nxt, cache))
        tokens, st = torch.cat(toks, 1), torch.cat(states, 1).float()
        labels = F.linear(st / scale, weight).argmax(-1)
        for r in range(tokens.shape[0]):
            out.tokens.append(tokens[r])
            out.states.append(st[r].clone())
            out.labels.append(labels[r])
            out.starts.append(x.shape[1])
            out.kinds.append(kind)
        if log:
            log(f"{kind} continuations: {len(out.tokens)}/{prompts.shape[0]}, {time.perf_counter() - t0:.0f} s")
    out.seconds = time.perf_counter() - t0
    return out


def repeat_sequences(loaded, passages: Sequence[str]) -> list[list[int]]:
    """Input-grounded sequences for a `LoadedModel`: a chat request to repeat a passage, then the passage
    itself (what the chat target answers, near enough; the labels are still the target's own argmax)."""
    out = []
    for p in passages:
        msgs = [{"role": "user", "content": "Repeat the following text exactly:\n\n" + p}]
        out.append(loaded.encode_prompt(msgs) + loaded.tokenizer.encode(p))
    return out


def merge(parts: Sequence[Features]) -> Features:
    """One feature set of all chunks of `parts`, in order."""
    out = Features()
    for f in parts:
        out.tokens += f.tokens
        out.states += f.states
        out.labels += f.labels
        out.starts += f.starts or [0] * len(f.tokens)
        out.kinds += f.kinds or ["text"] * len(f.tokens)
        out.seconds += f.seconds
    return out
