"""Real filler text for haystacks: the bundled WikiText-2 excerpt (see sdk/data/README.md)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def wikitext() -> str:
    """The excerpt's text, whitespace-normalized (the `= Heading =` lines and ` @-@ ` stay: they are WikiText)."""
    raw = resources.files("edgecpm").joinpath("data/wikitext2_excerpt.txt").read_text(encoding="utf-8-sig")
    return " ".join(raw.split())


def filler_ids(token_ids: list[int], start: int, n: int) -> list[int]:
    """n filler tokens from `start`, wrapping around the excerpt when a haystack is longer than it."""
    if not token_ids:
        raise ValueError("empty filler text")
    return [token_ids[(start + i) % len(token_ids)] for i in range(n)]
