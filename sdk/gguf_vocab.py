"""Rebuild a working tokenizer from the vocabulary embedded in a GGUF file.

`llama` (SentencePiece BPE with scores and byte fallback) becomes a SentencePiece model proto, so tokenization
is sentencepiece's own; `gpt2` (byte-level BPE with merges) becomes a HF `tokenizers` BPE model with the
pre-tokenizer that the GGUF's `tokenizer.ggml.pre` names.
"""

from __future__ import annotations

from typing import Any

from edgecpm.errors import EdgecpmError
from edgecpm.tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer
from edgecpm.weights.gguf_source import field_value

# GGUF token types (llama.cpp): 1 NORMAL, 2 UNKNOWN, 3 CONTROL, 4 USER_DEFINED, 5 UNUSED, 6 BYTE
CONTROL, USER_DEFINED = 3, 4

# pre-tokenizer regexes for the byte-level BPE flavours edgecpm knows (llama.cpp's `tokenizer.ggml.pre` names)
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def tokenizer_from_gguf(reader: Any, eos_ids: tuple[int, ...] = ()) -> Tokenizer:
    """The GGUF's tokenizer; any malformed vocabulary metadata is one `EdgecpmError`."""
    try:
        return _tokenizer_from_gguf(reader, eos_ids)
    except EdgecpmError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, OverflowError, AttributeError, UnicodeError) as exc:
        raise EdgecpmError(
            f"GGUF tokenizer metadata is malformed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        ) from None


def _tokenizer_from_gguf(reader: Any, eos_ids: tuple[int, ...]) -> Tokenizer:
    model = field_value(reader, "tokenizer.ggml.model")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise EdgecpmError("GGUF file has no tokenizer.ggml.tokens vocabulary")
    types = field_value(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    bos = field_value(reader, "tokenizer.ggml.bos_token_id")
    eos = field_value(reader, "tokenizer.ggml.eos_token_id")
    template = field_value(reader, "tokenizer.chat_template")
    special = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED)}
    eos_all = tuple(eos_ids) or ((int(eos),) if eos is not None else ())
    if model == "llama":
        scores = field_value(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
        add_prefix = field_value(reader, "tokenizer.ggml.add_space_prefix", True)
        add_bos = field_value(reader, "tokenizer.ggml.add_bos_token", True)
        proto = _spm_proto(
            tokens, scores, types, add_prefix, unk_id=int(field_value(reader, "tokenizer.ggml.unknown_token_id", 0))
        )
        return SentencePieceTokenizer(
            model_proto=proto,
            special_tokens=special,
            bos_id=None if bos is None else int(bos),
            eos_ids=eos_all,
            add_bos=bool(add_bos),
            chat_template=template,
            vocab_size=len(tokens),
        )
    if model == "gpt2":
        merges = field_value(reader, "tokenizer.ggml.merges")
        if not merges:
            raise EdgecpmError("GGUF gpt2 tokenizer has no tokenizer.ggml.merges")
        add_bos = field_value(reader, "tokenizer.ggml.add_bos_token", False)
        pre = field_value(reader, "tokenizer.ggml.pre", "default")
        backend = _bpe_backend(tokens, merges, special, pre)
        return HFTokenizer(
            backend,
            bos_id=None if bos is None else int(bos),
            eos_ids=eos_all,
            add_bos=bool(add_bos),
            chat_template=template,
            special_tokens=special,
        )
    raise EdgecpmError(f"GGUF tokenizer model {model!r} is not supported; expected 'llama' or 'gpt2'")


def _spm_proto(tokens: list[str], scores: list[float], types: list[int], add_prefix: bool, unk_id: int) -> bytes:
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(tokens)
    m.trainer_spec.byte_fallback = any(t == 6 for t in types)
    m.trainer_spec.unk_id = unk_id
    m.trainer_spec.bos_id = -1
    m.trainer_spec.eos_id = -1
    m.trainer_spec.pad_id = -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = bool(add_prefix)
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for i, (text, score, ty) in enumerate(zip(tokens, scores, types)):
        piece = m.pieces.add()
        piece.piece = text
        piece.score = float(score)
        piece.type = ty if ty in (1, 2, 3, 4, 5, 6) else 1
        if i == unk_id:
            piece.type = 2
    return m.SerializeToString()


def _bpe_backend(tokens: list[str], merges: list[str], special: dict[str, int], pre: str) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("default", "gpt-2", "gpt2", ""):
        tk.pre_tokenizer = byte_level
    else:
        # other byte-level BPE flavours: split with the GPT-2 regex, then map bytes
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_GPT2_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tk
