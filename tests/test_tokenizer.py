"""Tokenizers against the libraries/runtimes they must agree with (sentencepiece itself, llama.cpp)."""

from __future__ import annotations

import pytest
import sentencepiece as spm

import edgecpm
from edgecpm.backends.llamacpp_loader import open_llama
from edgecpm.tokenizer import StreamDecoder, load_tokenizer_dir

SAMPLES = [
    "The game 's opening theme was composed by Hitoshi Sakimoto .",
    "  leading spaces\nand\ttabs",
    "naïve café — 東京 🚀 ü",
    "1234567 numbers 3.14",
]


def test_sentencepiece_matches_library(tiny_tied) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tied / "tokenizer.model"))
    tok = load_tokenizer_dir(tiny_tied, bos_id=1, eos_ids=[2])
    for text in SAMPLES:
        assert tok.encode(text, add_bos=False) == sp.encode(text)
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text))


def test_special_tokens_are_single_ids(tiny_tied) -> None:
    tok = edgecpm.load(tiny_tied).tokenizer
    im_start, im_end = tok.special_tokens["<|im_start|>"], tok.special_tokens["<|im_end|>"]
    assert (im_start, im_end) == (tok.vocab_size - 7, tok.vocab_size - 8)  # published layout: at the end
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[1] == im_start and im_end in ids


def test_chat_template_is_minicpm_chatml(tiny_tied) -> None:
    m = edgecpm.load(tiny_tied)
    text = m.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("text", ["東京タワー", "emoji 🚀🚀 end", "ü ö ä"])
def test_stream_decoder_never_splits_characters(tiny_tied, text: str) -> None:
    tok = load_tokenizer_dir(tiny_tied, bos_id=1, eos_ids=[2])
    ids = tok.encode(text, add_bos=False)
    # byte fallback really splits these characters over several tokens
    assert len(ids) > len(text.split())
    stream = StreamDecoder(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids)


def test_gguf_bpe_vocab_matches_llamacpp(smollm2_path, wikitext) -> None:
    pytest.importorskip("llama_cpp")
    llm = open_llama(str(smollm2_path), n_ctx=64, vocab_only=True, verbose=False)
    tok = edgecpm.load(smollm2_path).tokenizer
    for text in SAMPLES + [wikitext[:3000], "<|im_start|>user\nHello<|im_end|>"]:
        assert tok.encode(text) == llm.tokenize(text.encode(), add_bos=False, special=True)
        assert tok.decode(tok.encode(text), skip_special=False) == text
