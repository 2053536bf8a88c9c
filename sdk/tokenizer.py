"""Tokenizers: SentencePiece `tokenizer.model` (what MiniCPM4 ships), HF `tokenizer.json`, and the vocabulary
embedded in a GGUF file (llama SPM and gpt2 byte-level BPE), behind one small interface.

Special tokens written in text (`<|im_start|>` ...) become their single ids, as HF and llama.cpp do with
`special=True`. `StreamDecoder` emits text only once it is complete UTF-8, so a character split across
byte-fallback tokens is never broken in a stream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edgecpm.chat import render_chat
from edgecpm.errors import EdgecpmError
from edgecpm.jsonfile import read_json


class Tokenizer:
    """Common surface: `encode`, `decode`, special ids, chat template."""

    bos_id: int | None = None
    eos_ids: tuple[int, ...] = ()
    add_bos: bool = True
    chat_template: str | None = None
    special_tokens: dict[str, int]

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def _encode_plain(self, text: str) -> list[int]:
        raise NotImplementedError

    def _id_to_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Text -> ids; special-token strings in the text map to their ids."""
        ids: list[int] = []
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids.append(self.bos_id)
        for piece, special_id in self._split_special(text):
            if special_id is not None:
                ids.append(special_id)
            elif piece:
                ids.extend(self._encode_plain(piece))
        return ids

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = True) -> bytes:
        special = set(self.special_tokens.values())
        return b"".join(self._id_to_bytes(i) for i in ids if not (skip_special and i in special))

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return render_chat(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.id_to_text(self.bos_id) if self.bos_id is not None else "",
            eos_token=self.id_to_text(self.eos_ids[0]) if self.eos_ids else "",
        )

    def id_to_text(self, token_id: int) -> str:
        for text, i in self.special_tokens.items():
            if i == token_id:
                return text
        return self._id_to_bytes(token_id).decode("utf-8", errors="replace")

    def _split_special(self, text: str) -> list[tuple[str, int | None]]:
        if not self.special_tokens:
            return [(text, None)]
        pattern = getattr(self, "_special_re", None)
        if pattern is None:
            alternatives = sorted(self.special_tokens, key=len, reverse=True)
            pattern = re.compile("(" + "|".join(re.escape(s) for s in alternatives) + ")")
            self._special_re = pattern
        parts: list[tuple[str, int | None]] = []
        for i, chunk in enumerate(pattern.split(text)):
            parts.append((chunk, self.special_tokens[chunk] if i % 2 else None))
        return parts


class SentencePieceTokenizer(Tokenizer):
    """MiniCPM4's `tokenizer.model` plus the added/special tokens of `tokenizer_config.json`."""

    def __init__(
        self,
        model_file: str | Path | None = None,
        *,
        model_proto: bytes | None = None,
        special_tokens: dict[str, int] | None = None,
        bos_id: int | None = None,
        eos_ids: Sequence[int] = (),
        add_bos: bool = True,
        chat_template: str | None = None,
        vocab_size: int | None = None,
    ) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        try:
            if model_proto is not None:
                self.sp.LoadFromSerializedProto(model_proto)
            else:
                self.sp.Load(str(model_file))
            self.special_tokens = dict(special_tokens or {})
            for i in range(self.sp.GetPieceSize()):
                if self.sp.IsControl(i) and self.sp.IdToPiece(i) not in self.special_tokens:
                    self.special_tokens[self.sp.IdToPiece(i)] = i
        except (OSError, RuntimeError, UnicodeDecodeError) as exc:  # a damaged proto can hold non-UTF-8 pieces
            raise EdgecpmError(
                f"cannot load SentencePiece model {model_file or '<gguf vocab>'}: "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            ) from None
        self.bos_id = bos_id if bos_id is not None else (self.sp.bos_id() if self.sp.bos_id() >= 0 else None)
        self.eos_ids = tuple(eos_ids) or ((self.sp.eos_id(),) if self.sp.eos_id() >= 0 else ())
        self.add_bos = add_bos
        self.chat_template = chat_template
        self._vocab_size = max(
            vocab_size or 0, self.sp.GetPieceSize(), max(self.special_tokens.values(), default=0) + 1
        )
        self._extra_text = {i: t.encode() for t, i in self.special_tokens.items() if i >= self.sp.GetPieceSize()}

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def _encode_plain(self, text: str) -> list[int]:
        return list(self.sp.EncodeAsIds(text))

    def _id_to_bytes(self, token_id: int) -> bytes:
        if token_id in self._extra_text:
            return self._extra_text[token_id]
        if token_id < 0 or token_id >= self.sp.GetPieceSize():
            return b""
        if self.sp.IsByte(token_id):
            return bytes([int(self.sp.IdToPiece(token_id)[3:5], 16)])
        if self.sp.IsControl(token_id) or self.sp.IsUnknown(token_id):
            return self.sp.IdToPiece(token_id).encode() if not self.sp.IsUnknown(token_id) else " \u2047 ".encode()
        return self.sp.IdToPiece(token_id).replace("\u2581", " ").encode()

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = True) -> bytes:
        data = super().decode_bytes(ids, skip_special)
        # SentencePiece adds a dummy prefix space to the first word; strip it as sp.Decode does
        return data[1:] if data.startswith(b" ") else data


class HFTokenizer(Tokenizer):
    """A `tokenizer.json` (HF `tokenizers`), used for byte-level BPE models and HF-only checkpoints."""

    def __init__(
        self,
        backend: Any,
        *,
        bos_id: int | None,
        eos_ids: Sequence[int],
        add_bos: bool,
        chat_template: str | None,
        special_tokens: dict[str, int] | None = None,
    ) -> None:
        self.tk = backend
        self.bos_id = bos_id
        self.eos_ids = tuple(eos_ids)
        self.add_bos = add_bos
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self._byte_decoder = _bytes_to_unicode_inverse() if _is_byte_level(self.tk) else None

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def _encode_plain(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def _id_to_bytes(self, token_id: int) -> bytes:
        piece = self.tk.id_to_token(token_id)
        if piece is None:
            return b""
        if piece in self.special_tokens:
            return piece.encode()
        if self._byte_decoder is not None:
            return bytes(self._byte_decoder.get(ch, 0) for ch in piece)
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece.replace("\u2581", " ").encode()

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = True) -> bytes:
        data = super().decode_bytes(ids, skip_special)
        # SentencePiece-style (Metaspace) vocabularies carry a dummy prefix "▁" on the first word: drop it as
        # sentencepiece does; byte-level BPE has no such prefix
        if self._byte_decoder is None and data.startswith(b" "):
            return data[1:]
        return data


def _is_byte_level(tk: Any) -> bool:
    try:
        spec = json.loads(tk.to_str())
    except Exception:  # noqa: BLE001 - any failure means "not byte level"
        return False
    decoder = spec.get("decoder") or {}
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", [])]
    return "ByteLevel" in kinds


def _bytes_to_unicode_inverse() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable-unicode table, inverted."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class StreamDecoder:
    """Incremental detokenizer: `push(id)` returns only newly completed text (never half a character)."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.emitted = 0  # number of bytes already returned

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        data = self.tokenizer.decode_bytes(self.ids, self.skip_special)
        pending = data[self.emitted :]
        complete = _complete_utf8_prefix(pending)
        self.emitted += len(complete)
        return complete.decode("utf-8", errors="replace")

    def flush(self) -> str:
        data = self.tokenizer.decode_bytes(self.ids, self.skip_special)[self.emitted :]
        self.emitted += len(data)
        return data.decode("utf-8", errors="replace")


def _complete_utf8_prefix(data: bytes) -> bytes:
    """The longest prefix that does not end inside a multi-byte UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0b1100_0000 == 0b1000_0000:
            continue  # continuation byte: keep looking for the lead byte
        if byte & 0b1000_0000 == 0:
            return data
        need = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
        return data if back >= need else data[:-back]
    return data


# ---------------------------------------------------------------------------------------------------------
# Loading


def read_added_tokens(directory: str | Path) -> dict[int, tuple[str, bool]]:
    """id -> (text, is_special) from `tokenizer_config.json`'s added_tokens_decoder and `added_tokens.json`
    (MiniCPM4's `<|im_end|>` ... live there, outside `tokenizer.model`)."""
    d = Path(directory)
    out: dict[int, tuple[str, bool]] = {}
    for name in ("tokenizer_config.json", "added_tokens.json"):
        path = d / name
        if not path.is_file():
            continue
        data = read_json(path, name)
        try:
            if name == "tokenizer_config.json":
                decoder = data.get("added_tokens_decoder") or {}
                for tid, info in decoder.items():
                    if not isinstance(info.get("content"), str):
                        raise TypeError(f"token {tid}: 'content' is not a string")
                    out[_token_id(tid)] = (_token_text(info["content"]), bool(info.get("special", False)))
            else:
                for text, tid in data.items():
                    out.setdefault(_token_id(tid), (_token_text(text), True))
        except (AttributeError, TypeError, ValueError) as exc:
            raise EdgecpmError(f"{name} has a malformed added-token table ({exc})") from None
    return out


MAX_TOKEN_CHARS = 1024  # real added/special tokens are tens of characters; a 10^6-character one made the
# special-token splitter's regex take seconds to compile (found by tests/test_fuzz.py)


def _token_text(text: str) -> str:
    """A token's text, which must be encodable UTF-8 (JSON allows lone surrogates like \\udcff; UTF-8 does not)
    and at most MAX_TOKEN_CHARS long."""
    text.encode("utf-8")  # UnicodeEncodeError is a ValueError: reported as a malformed table
    if len(text) > MAX_TOKEN_CHARS:
        raise ValueError(f"a token of {len(text)} characters (at most {MAX_TOKEN_CHARS})")
    return text


def _check_text_rules(spec: Any) -> None:
    """tokenizer.json's normalizer / pre-tokenizer / decoder strings are a few characters (a Replace of " " by
    "\u2581", a split regex); a 10^6-character Replace made "Hello world" three million tokens (found by
    tests/test_fuzz.py), so any string there longer than MAX_TOKEN_CHARS is refused."""
    if not isinstance(spec, dict):
        return
    stack = [(key, spec.get(key)) for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder")]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str) and len(value) > MAX_TOKEN_CHARS:
            raise EdgecpmError(
                f"tokenizer.json: a {where} string of {len(value)} characters (at most {MAX_TOKEN_CHARS})"
            )
        if isinstance(value, dict):  # a Precompiled normalizer's charsmap is data, not text it inserts
            stack += [(where, v) for k, v in value.items() if k != "precompiled_charsmap"]
        elif isinstance(value, list):
            stack += [(where, v) for v in value]


def _token_id(value: Any) -> int:
    """A token id from a tokenizer file: an integer (or its decimal string, as JSON object keys are) in
    [0, 2^31)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"token id {value!r} is not an integer")
    tid = int(value)
    if not 0 <= tid < 1 << 31:
        raise ValueError(f"token id {tid} is out of range")
    return tid


def load_tokenizer_dir(directory: str | Path, *, bos_id: int | None = None, eos_ids: Sequence[int] = ()) -> Tokenizer:
    """A HF checkpoint's tokenizer: `tokenizer.model` (preferred, as MiniCPM4 ships) else `tokenizer.json`."""
    d = Path(directory)
    cfg: dict[str, Any] = {}
    if (d / "tokenizer_config.json").exists():
        cfg = read_json(d / "tokenizer_config.json", "tokenizer_config.json")
        if not isinstance(cfg, dict):
            raise EdgecpmError("tokenizer_config.json must hold a JSON object")
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next(
            (t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None
        )
    if template is None and (d / "chat_template.jinja").exists():
        try:
            template = (d / "chat_template.jinja").read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EdgecpmError(f"chat_template.jinja cannot be read as UTF-8 text ({exc})") from None
    if template is not None and not isinstance(template, str):
        raise EdgecpmError(f"tokenizer_config.json: 'chat_template' is {type(template).__name__}; expected a string")
    special = {text: tid for tid, (text, _) in read_added_tokens(d).items()}
    add_bos = bool(cfg.get("add_bos_token", True))
    if (d / "tokenizer.model").exists():
        return SentencePieceTokenizer(
            d / "tokenizer.model",
            special_tokens=special,
            bos_id=bos_id,
            eos_ids=eos_ids,
            add_bos=add_bos,
            chat_template=template,
        )
    if (d / "tokenizer.json").exists():
        from tokenizers import Tokenizer as HFBackend

        spec = read_json(d / "tokenizer.json", "tokenizer.json")
        _check_text_rules(spec)
        try:
            tk = HFBackend.from_str(json.dumps(spec))
        except Exception as exc:  # noqa: BLE001 - `tokenizers` raises bare Exception on a bad file
            raise EdgecpmError(
                f"tokenizer.json is not a valid tokenizer ({' '.join(str(exc).split())[:200]})"
            ) from None
        try:
            for tok in spec.get("added_tokens") or []:
                if tok.get("special"):
                    if not isinstance(tok.get("content"), str):
                        raise TypeError("an added token's 'content' is not a string")
                    special[_token_text(tok["content"])] = _token_id(tok.get("id"))
        except (AttributeError, TypeError, ValueError) as exc:
            raise EdgecpmError(f"tokenizer.json has a malformed added_tokens list ({exc})") from None
        return HFTokenizer(
            tk,
            bos_id=bos_id,
            eos_ids=eos_ids,
            add_bos=bool(cfg.get("add_bos_token", False)),
            chat_template=template,
            special_tokens=special,
        )
    raise EdgecpmError(f"no tokenizer.model or tokenizer.json in {d}")
