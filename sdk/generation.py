"""Token generation over any `Backend`: sampling, stop conditions and streaming.

Sampling follows the usual order: temperature, then top-k, then top-p (nucleus), drawn with a seeded numpy
generator so `seed=` reproduces a run on every backend. Temperature 0 is greedy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecpm.backends.base import Backend
from edgecpm.errors import EdgecpmError
from edgecpm.tokenizer import StreamDecoder, Tokenizer


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise EdgecpmError(f"temperature is {self.temperature}; expected >= 0")
        if not 0 < self.top_p <= 1:
            raise EdgecpmError(f"top_p is {self.top_p}; expected a value in (0, 1]")
        if self.top_k < 0:
            raise EdgecpmError(f"top_k is {self.top_k}; expected >= 0")


def probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution `sample` draws from (float64): temperature, top-k, top-p; one-hot at temperature 0.

    Speculative decoding verifies drafts against exactly this distribution, so its output matches `sample`'s.
    """
    if params.temperature == 0:
        probs = np.zeros(logits.shape[-1])
        probs[int(np.argmax(logits))] = 1.0
        return probs
    x = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < x.size:
        kth = np.partition(x, -params.top_k)[-params.top_k]
        x = np.where(x < kth, -np.inf, x)
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p) + 1)]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return probs


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    return int(rng.choice(probs.size, p=probs))


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    if params.temperature == 0:
        return int(np.argmax(logits))
    return draw(probabilities(logits, params), rng)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop", "eos" or "length"
    prefill_seconds: float
    decode_seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def decode_tokens_per_s(self) -> float:
        n = max(len(self.token_ids) - 1, 0)
        return n / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else float("nan")


class Generator:
    """Runs the decode loop; `stream()` yields text pieces, `run()` returns a `GenerationResult`."""

    def __init__(
        self, backend: Backend, tokenizer: Tokenizer, eos_ids: Sequence[int] = (), speculator: Any = None
    ) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids) | set(tokenizer.eos_ids)
        # an `edgecpm.speculative.Speculator`: drafts tokens and verifies them on `backend` (same output)
        self.speculator = speculator

    def stream(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        params: SamplingParams,
        stop: Sequence[str] = (),
        result: GenerationResult | None = None,
    ) -> Iterator[str]:
        if max_new_tokens < 0:
            raise EdgecpmError(f"max_new_tokens is {max_new_tokens}; expected >= 0")
        if not prompt_ids:
            raise EdgecpmError("the prompt encodes to no tokens")
        rng = np.random.default_rng(params.seed)
        decoder = StreamDecoder(self.tokenizer)
        out = result if result is not None else GenerationResult("", [], len(prompt_ids), "length", 0.0, 0.0)
        out.prompt_tokens = len(prompt_ids)
        t0 = time.perf_counter()
        if self.speculator is not None:
            tokens = self.speculator.tokens(self.backend, prompt_ids, max_new_tokens, params, rng, out)
        else:
            tokens = self._plain_tokens(prompt_ids, max_new_tokens, params, rng, out)
        text = ""
        for token in tokens:
            if token in self.eos_ids:
                out.finish_reason = "eos"
                break
            out.token_ids.append(token)
            piece = decoder.push(token)
            text += piece
            hit = _find_stop(text, stop)
            if hit is not None:
                piece = piece[: max(0, len(piece) - (len(text) - hit))]
                text = text[:hit]
                out.finish_reason = "stop"
                if piece:
                    yield piece
                break
            if piece:
                yield piece
        if out.finish_reason != "stop":
            tail = decoder.flush()
            text += tail
            if tail:
                yield tail
        out.decode_seconds = time.perf_counter() - t0 - out.prefill_seconds
        out.text = text

    def _plain_tokens(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        params: SamplingParams,
        rng: np.random.Generator,
        out: GenerationResult,
    ) -> Iterator[int]:
        """One target forward per token; the consumer stops at eos or a stop string."""
        t0 = time.perf_counter()
        logits = self.backend.prefill(prompt_ids)
        out.prefill_seconds = time.perf_counter() - t0
        for step in range(max_new_tokens):
            token = sample(logits, params, rng)
            yield token
            if step + 1 < max_new_tokens:
                logits = self.backend.decode([token])[-1]

    def run(
        self, prompt_ids: Sequence[int], max_new_tokens: int, params: SamplingParams, stop: Sequence[str] = ()
    ) -> GenerationResult:
        result = GenerationResult("", [], len(prompt_ids), "length", 0.0, 0.0)
        for _ in self.stream(prompt_ids, max_new_tokens, params, stop, result):
            pass
        return result


def _find_stop(text: str, stop: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None
