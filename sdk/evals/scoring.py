"""Log-probabilities from backend logits, and timing of a run."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def continuation_scores(backend: object, prompt_ids: list[int], answer_ids: list[int]) -> tuple[bool, float]:
    """(greedy would produce `answer_ids` exactly, mean log-prob per answer token) after prefilling `prompt_ids`.

    Teacher forcing: the prompt's last logits score the first answer token, one decode of the answer's other
    tokens scores the rest. Greedy decoding yields the answer iff every row's argmax is the answer token.
    """
    rows = [np.asarray(backend.prefill(prompt_ids), dtype=np.float32)[None]]
    if len(answer_ids) > 1:
        rows.append(np.asarray(backend.decode(answer_ids[:-1]), dtype=np.float32))
    logits = np.concatenate(rows, axis=0)
    targets = np.asarray(answer_ids)
    logp = log_softmax(logits)[np.arange(len(targets)), targets]
    exact = bool((logits.argmax(axis=-1) == targets).all())
    return exact, float(logp.mean())
