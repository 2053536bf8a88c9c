"""FR-Spec (Zhao et al. 2025): a draft's output head restricted to the N most frequent tokens of a corpus.

The table is the corpus's token ids ordered by count; a draft computes logits only over the first N rows of
the output head, so its per-step head cost drops by V/N. The target still verifies over the full vocabulary,
so the output is unchanged (greedy) or distributed as the target's (sampling: the draft's q is zero outside
the N tokens, which the rejection rule accounts for).

Stored beside the target as `<target>.freq.json` (an artifact folder: `freq_table.json` inside it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgecpm.errors import EdgecpmError

FORMAT = "edgecpm-freq-table"


def count_tokens(ids: Iterable[int], vocab_size: int) -> np.ndarray:
    counts = np.bincount(np.asarray(list(ids), dtype=np.int64), minlength=vocab_size)
    if counts.size > vocab_size:
        raise EdgecpmError(f"token id {counts.size - 1} is outside the vocabulary (size {vocab_size})")
    return counts


def build_table(counts: np.ndarray, top: int, corpus: str = "") -> dict[str, Any]:
    """The `top` most frequent ids (ties: lower id first), with their counts."""
    if not isinstance(top, int) or top < 1:
        raise EdgecpmError(f"--top is {top!r}; expected a positive number of tokens")
    vocab = int(counts.size)
    top = min(top, vocab)
    order = np.lexsort((np.arange(vocab), -counts))[:top]
    total = int(counts.sum())
    return {
        "format": FORMAT,
        "version": 1,
        "vocab_size": vocab,
        "corpus": corpus,
        "corpus_tokens": total,
        "top": top,
        "coverage": round(float(counts[order].sum()) / total, 6) if total else 0.0,
        "ids": [int(i) for i in order],
        "counts": [int(counts[i]) for i in order],
    }


def write_table(table: dict[str, Any], out: Path) -> Path:
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(table) + "\n", encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_ids(path: Path, vocab_size: int, top: int | None = None) -> np.ndarray:
    """The first `top` (default: all stored) ids of the table at `path`, checked against the vocabulary."""
    path = Path(path)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EdgecpmError(f"cannot read the frequency table {path}: {exc}") from None
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        raise EdgecpmError(f"{path} is not a frequency table (format {FORMAT!r}); build one with `edgecpm freq-table`")
    if table.get("vocab_size") != vocab_size:
        raise EdgecpmError(
            f"the frequency table {path.name} is for a vocabulary of {table.get('vocab_size')}, not {vocab_size}"
        )
    ids = np.asarray(table["ids"], dtype=np.int64)
    if top is not None:
        if top < 1:
            raise EdgecpmError(f"FR-Spec size {top}; expected a positive number of tokens")
        if top > ids.size:
            raise EdgecpmError(f"the frequency table {path.name} holds {ids.size} tokens, fewer than the {top} asked")
        ids = ids[:top]
    if ids.size == 0 or ids.min() < 0 or ids.max() >= vocab_size or np.unique(ids).size != ids.size:
        raise EdgecpmError(f"the frequency table {path.name} has ids outside the vocabulary or repeated")
    return ids


def table_path(target: Path) -> Path:
    """Where the frequency table of the model at `target` lives (beside it, or inside an artifact folder)."""
    target = Path(target)
    if target.is_dir():
        return target / "freq_table.json"
    return target.with_name(target.stem + ".freq.json")
