"""The ONNX artifact runs in ONNX Runtime GenAI and generates what edgecpm's torch backend generates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgecpm
from edgecpm.exporters.onnx_exporter import export
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

og = pytest.importorskip("onnxruntime_genai")

PROMPT = "The tower is 324 metres tall, about the same height"


def _torch_greedy(ckpt: Path, ids: list[int], n: int) -> list[int]:
    backend = edgecpm.load(ckpt).backend
    logits = backend.prefill(ids)
    out = []
    for _ in range(n):
        tok = int(np.argmax(logits))
        out.append(tok)
        logits = backend.decode([tok])[-1]
    return out


def _genai_greedy(artifact: Path, ids: list[int], n: int) -> list[int]:
    model = og.Model(str(artifact))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + n, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(ids, dtype=np.int32))
    out = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


# init_std 0.8: random weights large enough that greedy decoding does not collapse onto one repeated token
SPECS = [
    SyntheticSpec(init_std=0.8, seed=5),
    SyntheticSpec(tied=False, num_layers=3, num_heads=8, num_kv_heads=2, hidden_size=64, init_std=0.8, seed=6),
]


@pytest.mark.parametrize("spec", SPECS, ids=["gqa_shared_buffer", "standard_ops_concat_cache"])
def test_genai_greedy_32_tokens_equal_torch_backend(spec: SyntheticSpec, tmp_path: Path) -> None:
    ckpt = cached_checkpoint(spec)
    out = tmp_path / "art"
    export(ckpt, out, "fp32", progress=False)
    ids = edgecpm.load(ckpt).tokenizer.encode(PROMPT)
    expected = _torch_greedy(ckpt, ids, 32)
    got = _genai_greedy(out, ids, 32)
    eos = set(edgecpm.load(ckpt).config.eos_token_ids)
    stop = next((i + 1 for i, t in enumerate(expected) if t in eos), 32)
    assert got == expected[:stop]
    assert stop == 32, "the prompt should not hit EOS (pick another prompt)"
    assert len(set(expected)) > 8  # a varied sequence, so equality means something


def test_genai_tokenizer_reads_exported_tokenizer_json(tiny_tied: Path, tmp_path: Path, wikitext: str) -> None:
    out = tmp_path / "art"
    export(tiny_tied, out, "fp32", progress=False)
    tok = og.Tokenizer(og.Model(str(out)))
    ref = edgecpm.load(tiny_tied).tokenizer
    text = wikitext[:4000]
    assert [int(t) for t in tok.encode(text)] == ref.encode(text, add_bos=False)
