"""The tokenizer file(s) an ExecuTorch artifact carries, in a form ExecuTorch's C++ LLM runner loads.

The runner (`load_tokenizer` in `extension/llm/runner`) tries HF `tokenizer.json` (BPE models only), then
tiktoken, then SentencePiece `tokenizer.model`. MiniCPM4 ships a SentencePiece model, which is copied as is; a
GGUF source gets its embedded vocabulary rebuilt (SentencePiece proto for `llama` vocabularies, a byte-level
BPE `tokenizer.json` for `gpt2` ones). `tokenizer_config.json` travels along so `edgecpm.load` sees the
special tokens, BOS handling and chat template. The runner reads logits rows of the tokenizer's
vocabulary size, so a tokenizer larger than the model's vocabulary is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edgecpm.config import ModelConfig
from edgecpm.errors import EdgecpmError
from edgecpm.tokenizer import read_added_tokens

_HF_SIDE_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
)


def write_runner_tokenizer(src: Path, config: ModelConfig, out: Path, gguf_reader: Any = None) -> list[str]:
    """Write the runner's tokenizer into `out`; return the file names written (the runner's file first)."""
    if gguf_reader is not None:
        return _from_gguf(gguf_reader, config, out)
    written: list[str] = []
    if (src / "tokenizer.model").exists():
        data = (src / "tokenizer.model").read_bytes()
        (out / "tokenizer.model").write_bytes(with_added_tokens(data, _added_tokens(src)))
        written.append("tokenizer.model")
    elif (src / "tokenizer.json").exists():
        _check_bpe_json(src / "tokenizer.json")
        shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
        written.append("tokenizer.json")
    else:
        raise EdgecpmError(f"no tokenizer.model or tokenizer.json in {src}; the ExecuTorch runner needs one")
    for name in _HF_SIDE_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, out / name)
            written.append(name)
    _check_vocab(out, written[0], config)
    return written


def _added_tokens(src: Path) -> dict[str, int]:
    """MiniCPM4's special tokens (`<|im_end|>` ...), which live outside `tokenizer.model`."""
    return {text: tid for tid, (text, _) in read_added_tokens(src).items()}


def with_added_tokens(model: bytes, added: dict[str, int]) -> bytes:
    """Append the added tokens that follow the SentencePiece vocabulary as USER_DEFINED pieces.

    ExecuTorch's runner only knows the tokenizer file: without this, `<|im_end|>` (MiniCPM4's chat stop token)
    is outside its vocabulary, so the runner can never sample it and does not parse it in prompts. Appended
    only when the ids continue the piece list without gaps (MiniCPM4's layout); otherwise left unchanged.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model)
    n = len(proto.pieces)
    extra = sorted((i, t) for t, i in added.items() if i >= n)
    if not extra or [i for i, _ in extra] != list(range(n, n + len(extra))):
        return model
    for _, text in extra:
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, 0.0, pb.ModelProto.SentencePiece.USER_DEFINED
    return proto.SerializeToString()


def _check_bpe_json(path: Path) -> None:
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("model", {}).get("type")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgecpmError(f"{path} is not valid JSON: {exc}") from None
    if kind not in (None, "BPE"):
        raise EdgecpmError(f"{path} is a {kind} tokenizer; ExecuTorch's runner reads only BPE tokenizer.json")


def _from_gguf(reader: Any, config: ModelConfig, out: Path) -> list[str]:
    from edgecpm.gguf_vocab import tokenizer_from_gguf
    from edgecpm.tokenizer import HFTokenizer, SentencePieceTokenizer

    tok = tokenizer_from_gguf(reader, config.eos_token_ids)
    specials = {str(i): {"content": t, "special": True} for t, i in tok.special_tokens.items()}
    side = {"add_bos_token": tok.add_bos, "chat_template": tok.chat_template, "added_tokens_decoder": specials}
    if isinstance(tok, SentencePieceTokenizer):
        (out / "tokenizer.model").write_bytes(tok.sp.serialized_model_proto())
        name = "tokenizer.model"
    elif isinstance(tok, HFTokenizer):
        (out / "tokenizer.json").write_text(tok.tk.to_str(), encoding="utf-8")
        name = "tokenizer.json"
    else:  # pragma: no cover - tokenizer_from_gguf returns one of the two
        raise EdgecpmError(f"cannot write a runner tokenizer for {type(tok).__name__}")
    (out / "tokenizer_config.json").write_text(json.dumps(side, indent=2), encoding="utf-8")
    _check_vocab(out, name, config)
    return [name, "tokenizer_config.json"]


def _check_vocab(out: Path, name: str, config: ModelConfig) -> None:
    """The runner samples `tokenizer.vocab_size()` logits; more than the model has reads out of bounds."""
    if name == "tokenizer.model":
        import sentencepiece as spm

        size = spm.SentencePieceProcessor(model_file=str(out / name)).GetPieceSize()
    else:
        from tokenizers import Tokenizer

        size = Tokenizer.from_file(str(out / name)).get_vocab_size(with_added_tokens=True)
    if size > config.vocab_size:
        raise EdgecpmError(
            f"the tokenizer has {size} tokens but the model only {config.vocab_size} logits; "
            "ExecuTorch's runner would read past the logits"
        )
