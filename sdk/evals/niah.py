"""Needle in a haystack: a passkey hidden at a chosen depth of real filler text, asked for at the end.

The prompt is the classic passkey-retrieval layout (an intro line, filler with the needle sentence inserted at
`depth` of the filler, then the question). The answer is scored by teacher forcing (`scoring.continuation_scores`):
a trial passes iff greedy decoding would produce the passkey's tokens exactly; the mean log-probability of those
tokens is kept as a finer-grained score. Every trial's key and filler offset come from `seed`, so runs repeat.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from edgecpm.errors import EdgecpmError
from edgecpm.evals.filler import filler_ids, wikitext
from edgecpm.evals.scoring import continuation_scores
from edgecpm.progress import progress_bar

DEFAULT_LENGTHS = (512, 1024, 2048, 4096)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
    "memorize it. I will quiz you about it.\n\n"
)
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\n\nWhat is the pass key? The pass key is"


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_bos=False))


def build_prompt(
    tokenizer: Any, filler: list[int], length: int, depth: float, key: int, start: int
) -> tuple[list[int], list[int]]:
    """(prompt ids of exactly `length` tokens minus the answer, answer ids) for one trial."""
    bos = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
    intro, question = _encode(tokenizer, INTRO), _encode(tokenizer, QUESTION)
    needle, answer = _encode(tokenizer, NEEDLE.format(key=key)), _encode(tokenizer, f" {key}")
    n_filler = length - len(bos) - len(intro) - len(needle) - len(question) - len(answer)
    if n_filler < 1:
        raise EdgecpmError(
            f"NIAH length {length} is too short for the passkey prompt (needs more than {length - n_filler} tokens)"
        )
    hay = filler_ids(filler, start, n_filler)
    at = round(depth * n_filler)
    return bos + intro + hay[:at] + needle + hay[at:] + question, answer


def _check(lengths: Sequence[int], depths: Sequence[float], trials: int) -> None:
    if not lengths or not depths:
        raise EdgecpmError("NIAH needs at least one length and one depth")
    if any(n <= 0 for n in lengths):
        raise EdgecpmError(f"NIAH lengths must be positive token counts, got {list(lengths)}")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise EdgecpmError(f"NIAH depths are fractions of the context in [0, 1], got {list(depths)}")
    if trials < 1:
        raise EdgecpmError(f"NIAH needs at least one trial per cell, got {trials}")


def run_niah(
    model: Any,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    trials: int = 2,
    seed: int = 0,
    progress: bool = True,
    label: str | None = None,
) -> dict[str, Any]:
    """Score `model` (a `LoadedModel`) on every (length, depth) cell; returns the JSON-ready result."""
    _check(lengths, depths, trials)
    n_ctx = getattr(model.backend, "n_ctx", None)
    if n_ctx is not None and max(lengths) > n_ctx:
        raise EdgecpmError(f"NIAH length {max(lengths)} exceeds the backend's context of {n_ctx} tokens")
    filler = _encode(model.tokenizer, wikitext())
    cells = []
    started = time.perf_counter()
    with progress_bar(
        len(lengths) * len(depths) * trials, f"niah {label or model.backend.name}", enabled=progress, unit="trial"
    ) as bar:
        for length in lengths:
            for depth in depths:
                cell_start = time.perf_counter()
                runs = []
                for trial in range(trials):
                    rng = random.Random(f"niah:{seed}:{length}:{depth}:{trial}")
                    key = rng.randint(10000, 99999)
                    prompt, answer = build_prompt(
                        model.tokenizer, filler, length, depth, key, rng.randrange(len(filler))
                    )
                    exact, logprob = continuation_scores(model.backend, prompt, answer)
                    runs.append({"key": key, "exact": exact, "logprob": round(logprob, 4)})
                    bar.update(1)
                cells.append(
                    {
                        "length": int(length),
                        "depth": float(depth),
                        "accuracy": sum(r["exact"] for r in runs) / trials,
                        "mean_logprob": round(sum(r["logprob"] for r in runs) / trials, 4),
                        "wall_s": round(time.perf_counter() - cell_start, 3),
                        "trials": runs,
                    }
                )
    n = len(cells)
    return {
        "suite": "niah",
        "label": label,
        "backend": model.backend.name,
        "model": str(model.path),
        "seed": seed,
        "trials": trials,
        "lengths": [int(x) for x in lengths],
        "depths": [float(d) for d in depths],
        "accuracy": round(sum(c["accuracy"] for c in cells) / n, 4),
        "mean_logprob": round(sum(c["mean_logprob"] for c in cells) / n, 4),
        "wall_s": round(time.perf_counter() - started, 2),
        "cells": cells,
    }
