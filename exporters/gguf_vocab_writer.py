"""Tokenizer metadata for a GGUF file: from a HF checkpoint's SentencePiece model, or copied from a GGUF.

llama.cpp takes the token list's length as n_vocab, so the list is padded to the embedding rows with unique
`[PAD{i}]` entries (duplicate strings abort llama.cpp's loader, so any duplicate is renamed the same way).
Added tokens (`added_tokens.json`, `added_tokens_decoder`) become CONTROL (special) or USER_DEFINED; special
ids, add-bos/eos flags and the chat template come from `gguf.SpecialVocab`, the gguf package's own reader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gguf import GGUFValueType, GGUFWriter, SpecialVocab, TokenType

from edgecpm.chat import MINICPM4_CHATML
from edgecpm.errors import EdgecpmError
from edgecpm.tokenizer import read_added_tokens


def write_vocab(
    writer: GGUFWriter, *, hf_dir: Path | None = None, reader: Any = None, n_vocab: int, architecture: str = "minicpm"
) -> None:
    if reader is not None:
        copy_gguf_vocab(writer, reader)
    elif hf_dir is not None:
        write_sentencepiece_vocab(writer, hf_dir, n_vocab, architecture)
    else:
        raise EdgecpmError("no tokenizer source for the GGUF vocabulary")


def copy_gguf_vocab(writer: GGUFWriter, reader: Any) -> None:
    """Every `tokenizer.*` key of the source GGUF, with its original GGUF types."""
    found = False
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        found = True
        vtype = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    if not found:
        raise EdgecpmError("the source GGUF has no tokenizer.* metadata to copy")


def write_sentencepiece_vocab(writer: GGUFWriter, directory: Path, n_vocab: int, architecture: str) -> None:
    from sentencepiece import SentencePieceProcessor
    from sentencepiece import sentencepiece_model_pb2 as pb

    model_file = directory / "tokenizer.model"
    if not model_file.is_file():
        raise EdgecpmError(
            f"{directory} has no tokenizer.model; the GGUF exporter writes SentencePiece vocabularies (MiniCPM4's kind)"
        )
    sp = SentencePieceProcessor()
    try:
        sp.Load(str(model_file))
    except (OSError, RuntimeError) as exc:
        raise EdgecpmError(f"cannot load {model_file}: {exc}") from None
    proto = pb.ModelProto()
    proto.ParseFromString(model_file.read_bytes())

    n_pieces = sp.GetPieceSize()
    size = max(n_vocab, n_pieces)
    tokens: list[str] = [f"[PAD{i}]" for i in range(size)]
    scores: list[float] = [-1000.0] * size
    types: list[int] = [int(TokenType.UNUSED)] * size
    for i in range(n_pieces):
        tokens[i] = sp.IdToPiece(i)
        scores[i] = float(sp.GetScore(i))
        types[i] = int(
            TokenType.UNKNOWN
            if sp.IsUnknown(i)
            else TokenType.CONTROL
            if sp.IsControl(i)
            else TokenType.UNUSED
            if sp.IsUnused(i)
            else TokenType.BYTE
            if sp.IsByte(i)
            else TokenType.NORMAL
        )
    for tid, (text, special) in read_added_tokens(directory).items():
        if tid >= size:
            raise EdgecpmError(f"added token {text!r} has id {tid}, outside the vocabulary of {size}")
        if tid < n_pieces and types[tid] != int(TokenType.UNUSED):
            continue  # already a SentencePiece piece (<unk>, <s>, </s>): keep its own type
        tokens[tid] = text
        scores[tid] = -1000.0
        types[tid] = int(TokenType.CONTROL if special else TokenType.USER_DEFINED)
    if size > n_vocab:
        raise EdgecpmError(f"tokenizer has {size} tokens but the embedding has only {n_vocab} rows")
    seen: set[str] = set()
    for i, text in enumerate(tokens):
        if text in seen:  # llama.cpp aborts the process on duplicate token strings
            tokens[i], types[i], scores[i] = f"[PAD{i}]", int(TokenType.UNUSED), -1000.0
        seen.add(tokens[i])

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(bool(proto.normalizer_spec.add_dummy_prefix))
    special = SpecialVocab(directory, n_vocab=size)
    # SpecialVocab resolves token strings only through tokenizer.json and skips list-valued config ids
    # (MiniCPM4's eos_token_id is [2, 73440]); fill what it missed from the vocabulary itself
    for kind, tid in _special_ids(directory, tokens, sp).items():
        special.special_token_ids.setdefault(kind, tid)
    special.add_to_gguf(writer, quiet=True)
    if special.chat_template is None and architecture == "minicpm":
        writer.add_chat_template(MINICPM4_CHATML)


def _special_ids(directory: Path, tokens: list[str], sp: Any) -> dict[str, int]:
    """bos/eos/unk/pad ids: tokenizer_config.json strings looked up in `tokens`, else config.json ints."""
    ids: dict[str, int] = {}
    index = {t: i for i, t in enumerate(tokens)}
    cfg_path, model_cfg_path = directory / "tokenizer_config.json", directory / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    model_cfg = json.loads(model_cfg_path.read_text(encoding="utf-8")) if model_cfg_path.is_file() else {}
    for kind in ("bos", "eos", "unk", "pad"):
        value = cfg.get(f"{kind}_token")
        text = value.get("content") if isinstance(value, dict) else value
        if isinstance(text, str) and text in index:
            ids[kind] = index[text]
            continue
        fallback = model_cfg.get(f"{kind}_token_id")
        if isinstance(fallback, list) and fallback:
            fallback = fallback[0]
        if isinstance(fallback, int) and 0 <= fallback < len(tokens):
            ids[kind] = fallback
    if "unk" not in ids and sp.unk_id() >= 0:
        ids["unk"] = int(sp.unk_id())
    return ids
