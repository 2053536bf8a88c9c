"""`tokenizer.json` + `tokenizer_config.json` for ONNX Runtime GenAI, without `transformers`.

Sources: an HF folder's `tokenizer.json` (copied), its SentencePiece `tokenizer.model` (MiniCPM4 ships a
byte-fallback BPE model; converted to an equivalent HF BPE tokenizer: same vocabulary and ids, merges ranked
by the merged piece's score as SentencePiece BPE applies them, `▁` whitespace, byte fallback), or a GGUF
vocabulary (`llama` = SentencePiece, `gpt2` = byte-level BPE with merges).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edgecpm.config import ModelConfig
from edgecpm.errors import EdgecpmError
from edgecpm.tokenizer import read_added_tokens

SPIECE_SPACE = "\u2581"


def spm_to_hf(proto: bytes, special: dict[str, int], add_bos: bool, bos: str | None) -> Any:
    """A `tokenizers.Tokenizer` that tokenizes exactly like the SentencePiece BPE model `proto`."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    m = pb.ModelProto()
    m.ParseFromString(proto)
    if m.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise EdgecpmError("only SentencePiece BPE tokenizers can be converted to tokenizer.json")
    pieces = [(p.piece, p.score, p.type) for p in m.pieces]
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    for text, tid in special.items():
        vocab.setdefault(text, tid)
    normal = {piece: score for piece, score, ty in pieces if ty in (1, 4)}
    ranked = []
    for piece, score in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, vocab[piece], vocab[left], vocab[right], left, right))
    ranked.sort()
    merges = [(left, right) for *_, left, right in ranked]
    unk = next((p for p, _, ty in pieces if ty == 2), None)
    tk = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=bool(m.trainer_spec.byte_fallback),
        )
    )
    steps = [normalizers.Replace(" ", SPIECE_SPACE)]
    if m.normalizer_spec.add_dummy_prefix:
        steps.insert(0, normalizers.Prepend(SPIECE_SPACE))
    tk.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace(SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if m.normalizer_spec.add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tk.decoder = decoders.Sequence(dec)
    controls = [p for p, _, ty in pieces if ty in (2, 3)]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in controls + list(special)])
    if add_bos and bos is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 $B:1", special_tokens=[(bos, vocab[bos])]
        )
    return tk


def write_tokenizer_files(src: Path, config: ModelConfig, out: Path) -> list[str]:
    """Write the two tokenizer files into `out`; returns their names."""
    src = Path(src)
    if src.is_dir():
        cfg = _read_json(src / "tokenizer_config.json")
        if (src / "tokenizer.json").exists():
            shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
        elif (src / "tokenizer.model").exists():
            special = {text: tid for tid, (text, _) in read_added_tokens(src).items()}
            bos = cfg.get("bos_token")
            bos = bos.get("content") if isinstance(bos, dict) else bos
            tk = spm_to_hf((src / "tokenizer.model").read_bytes(), special, bool(cfg.get("add_bos_token", True)), bos)
            (out / "tokenizer.json").write_text(tk.to_str(), encoding="utf-8")
        else:
            raise EdgecpmError(f"no tokenizer.json or tokenizer.model in {src}")
        cfg.setdefault("tokenizer_class", "LlamaTokenizer")
    else:
        cfg = _gguf_tokenizer(src, config, out)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return ["tokenizer.json", "tokenizer_config.json"]


def _gguf_tokenizer(path: Path, config: ModelConfig, out: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    from edgecpm.gguf_vocab import CONTROL, USER_DEFINED, _bpe_backend, _spm_proto
    from edgecpm.weights.gguf_source import field_value

    reader = GGUFReader(str(path))
    kind = field_value(reader, "tokenizer.ggml.model")
    tokens = field_value(reader, "tokenizer.ggml.tokens") or []
    types = field_value(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    special = {t: i for i, (t, ty) in enumerate(zip(tokens, types, strict=False)) if ty in (CONTROL, USER_DEFINED)}
    bos_id = field_value(reader, "tokenizer.ggml.bos_token_id")
    eos_id = field_value(reader, "tokenizer.ggml.eos_token_id")
    bos = tokens[int(bos_id)] if bos_id is not None else None
    template = field_value(reader, "tokenizer.chat_template")
    if kind == "gpt2":
        add_bos = bool(field_value(reader, "tokenizer.ggml.add_bos_token", False))
        tk = _bpe_backend(
            tokens,
            field_value(reader, "tokenizer.ggml.merges"),
            special,
            field_value(reader, "tokenizer.ggml.pre", "default"),
        )
        cls = "GPT2Tokenizer"
    elif kind == "llama":
        add_bos = bool(field_value(reader, "tokenizer.ggml.add_bos_token", True))
        scores = field_value(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
        proto = _spm_proto(
            tokens,
            scores,
            types,
            field_value(reader, "tokenizer.ggml.add_space_prefix", True),
            unk_id=int(field_value(reader, "tokenizer.ggml.unknown_token_id", 0)),
        )
        tk = spm_to_hf(proto, special, add_bos, bos)
        cls = "LlamaTokenizer"
    else:
        raise EdgecpmError(f"GGUF tokenizer model {kind!r} cannot be written as tokenizer.json")
    (out / "tokenizer.json").write_text(tk.to_str(), encoding="utf-8")
    cfg: dict[str, Any] = {
        "tokenizer_class": cls,
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config.max_position_embeddings,
    }
    if bos is not None:
        cfg["bos_token"] = bos
    if eos_id is not None:
        cfg["eos_token"] = tokens[int(eos_id)]
    if template:
        cfg["chat_template"] = template
    cfg["added_tokens_decoder"] = {str(i): {"content": t, "special": True} for t, i in special.items()}
    return cfg


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EdgecpmError(f"{path.name} is not valid JSON: {exc}") from None
