"""`edgecpm freq-table [MODEL] --text FILE --top N`: the corpus's N most frequent tokens, stored beside the model.

An EAGLE draft with FR-Spec (`--draft eagle+fr`) computes its logits over these tokens only
(`edgecpm.speculative.frspec`); the target still verifies over the whole vocabulary.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgecpm.errors import EdgecpmError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("freq-table", help="build an FR-Spec token frequency table from a corpus")
    p.add_argument("model", nargs="?", default=None, help="model whose tokenizer counts (default: bundled SmolLM2)")
    p.add_argument("--text", required=True, help="corpus (UTF-8 text file)")
    p.add_argument("--top", type=int, default=8192, help="tokens kept, most frequent first (default: 8192)")
    p.add_argument("--out", default=None, help="table path (default: beside the model, <model>.freq.json)")
    p.set_defaults(func=run)


def _tokenizer(path: str | None) -> tuple[Path, Any, int]:
    """(resolved model path, its tokenizer, vocabulary size) without loading weights where possible."""
    from edgecpm.default_model import resolve_model_path

    p = resolve_model_path(path)
    if not p.exists():
        raise EdgecpmError(f"model path not found: {p}")
    if p.is_file() and p.suffix == ".gguf":
        from edgecpm.gguf_vocab import tokenizer_from_gguf
        from edgecpm.weights import GGUFSource

        source = GGUFSource(p)
        return p, tokenizer_from_gguf(source.reader, source.config.eos_token_ids), source.config.vocab_size
    from edgecpm.api import load

    model = load(p)
    return p, model.tokenizer, model.config.vocab_size


def run(args: argparse.Namespace) -> int:
    from edgecpm.speculative.frspec import build_table, count_tokens, table_path, write_table

    text_path = Path(args.text)
    if not text_path.is_file():
        raise EdgecpmError(f"--text {text_path}: no such file")
    try:
        text = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgecpmError(f"--text {text_path}: cannot read it as UTF-8 text ({exc})") from None
    if args.top < 1:
        raise EdgecpmError(f"--top is {args.top}; expected a positive number of tokens")
    path, tok, vocab = _tokenizer(args.model)
    ids: list[int] = []
    for line in text.splitlines(keepends=True):  # line by line: bounded memory on a large corpus
        if line.strip():
            ids.extend(tok.encode(line, add_bos=False))
    if not ids:
        raise EdgecpmError(f"--text {text_path} has no text to count")
    table = build_table(count_tokens(ids, vocab), args.top, corpus=text_path.name)
    out = Path(args.out) if args.out else table_path(path)
    write_table(table, out)
    print(
        f"{out}: top {table['top']} of {vocab} tokens cover {table['coverage']:.1%} of the "
        f"{table['corpus_tokens']} tokens in {text_path.name}"
    )
    return 0
