"""ONNX export, checked by onnxruntime against the reference `Model` on the same tokens."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import edgecpm
from edgecpm.backends.onnx_backend import OnnxBackend
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.onnx_exporter import export
from edgecpm.model import Model
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
from edgecpm.weights import open_checkpoint


def _reference_logits(ckpt: Path, ids: np.ndarray) -> np.ndarray:
    config, source = open_checkpoint(ckpt)
    model = Model.from_source(config, source)
    with torch.no_grad():
        return model(torch.as_tensor(ids)[None])[0].numpy()


def _prefill_then_decode(backend: OnnxBackend, ids: np.ndarray, prompt: int) -> np.ndarray:
    rows = [backend.prefill(ids[:prompt].tolist(), all_logits=True)]
    rows += [backend.decode([int(t)]) for t in ids[prompt:]]
    return np.concatenate(rows)


@pytest.fixture(scope="module")
def tied_fp32(tiny_tied: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tied_fp32"
    export(tiny_tied, out, "fp32", progress=False)
    return out


CASES = {
    "tied_longrope": SyntheticSpec(),
    "untied_gqa4": SyntheticSpec(
        tied=False, num_layers=3, num_heads=8, num_kv_heads=2, hidden_size=64, shards=3, seed=1
    ),
    "plain_rope_mha": SyntheticSpec(longrope=False, num_heads=4, num_kv_heads=4, seed=2),
    "shared_layers": SyntheticSpec(num_layers=4, shared_unique_layers=2, ode_step=0.5, seed=3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fp32_prefill_and_16_decode_steps_match_reference(case: str, tmp_path: Path) -> None:
    ckpt = cached_checkpoint(CASES[case])
    out = tmp_path / "art"
    export(ckpt, out, "fp32", progress=False)
    config, _ = open_checkpoint(ckpt)
    ids = np.random.default_rng(7).integers(0, config.vocab_size, 24 + 16)
    ref = _reference_logits(ckpt, ids)
    got = _prefill_then_decode(OnnxBackend(out / "model.onnx", config), ids, 24)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-3


def test_artifact_layout_and_graph_conventions(tied_fp32: Path) -> None:
    names = {p.name for p in tied_fp32.iterdir()}
    assert {
        "model.onnx",
        "model.onnx.data",
        "genai_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "edgecpm.json",
    } <= names
    assert not [n for n in os.listdir(tied_fp32.parent) if n.startswith(".")]  # no temporary left behind
    model = onnx.load(str(tied_fp32 / "model.onnx"), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    assert inputs[:2] == ["input_ids", "attention_mask"] and "past_key_values.1.value" in inputs
    assert outputs[0] == "logits" and "present.0.key" in outputs
    ops = {n.op_type for n in model.graph.node}
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization"} <= ops
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(
        e.value == "model.onnx.data" for t in external for e in t.external_data if e.key == "location"
    )
    cfg = json.loads((tied_fp32 / "genai_config.json").read_text())
    assert cfg["model"]["type"] == "decoder" and cfg["search"]["past_present_share_buffer"] is True
    assert cfg["model"]["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"


def test_load_runs_onnxruntime_backend_with_truncate(tied_fp32: Path, tiny_tied: Path) -> None:
    lm = edgecpm.load(tied_fp32)
    assert lm.backend.name == "onnxruntime"
    ref = edgecpm.load(tiny_tied)
    ids = ref.tokenizer.encode("The tower is 324 metres tall, about the same height as an 81-storey building.")
    b, r = lm.backend, ref.backend
    np.testing.assert_allclose(b.prefill(ids[:10]), r.prefill(ids[:10]), atol=1e-3)
    b.decode(ids[10:16])
    r.decode(ids[10:16])
    b.truncate(12)  # speculative rollback: forget 4 tokens, then continue from there
    r.truncate(12)
    assert b.n_past == 12
    np.testing.assert_allclose(b.decode(ids[12:]), r.decode(ids[12:]), atol=1e-3)
    assert lm.generate("The tower", max_new_tokens=12) == ref.generate("The tower", max_new_tokens=12)


def test_tokenizer_json_matches_sentencepiece(tied_fp32: Path, tiny_tied: Path, wikitext: str) -> None:
    lm = edgecpm.load(tied_fp32)  # tokenizer from the artifact's tokenizer.json
    ref = edgecpm.load(tiny_tied)  # SentencePiece tokenizer.model
    text = wikitext[:20000] + " <|im_start|>user\nhi<|im_end|>"
    assert lm.tokenizer.encode(text) == ref.tokenizer.encode(text)
    ids = ref.tokenizer.encode(wikitext[:3000])
    # edgecpm's HFTokenizer decodes piece by piece and keeps SentencePiece's dummy-prefix space
    assert lm.tokenizer.decode(ids).removeprefix(" ") == ref.tokenizer.decode(ids)


@pytest.mark.parametrize("quant", ["int5", "q4_0", ""])
def test_unsupported_quant_is_rejected(quant: str, tiny_tied: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgecpmError, match="quant"):
        edgecpm.export(tiny_tied, format="onnx", out=tmp_path / "x", quant=quant or "none")
    assert not (tmp_path / "x").exists()


def test_bad_options_are_rejected(tiny_tied: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgecpmError, match="opset 12"):
        export(tiny_tied, tmp_path / "a", "fp32", progress=False, opset=12)
    with pytest.raises(EdgecpmError, match="group size 48"):
        export(tiny_tied, tmp_path / "b", "int4", progress=False, block_size=48)
    with pytest.raises(EdgecpmError, match="not found"):
        export(tmp_path / "missing", tmp_path / "c", "fp32", progress=False)
    assert not list(tmp_path.iterdir())


def test_unwritable_or_occupied_output(tiny_tied: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EdgecpmError, match="cannot write"):
        export(tiny_tied, blocker / "out", "fp32", progress=False)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(EdgecpmError, match="not empty"):
        export(tiny_tied, occupied, "fp32", progress=False)
    assert (occupied / "keep.txt").read_text() == "mine"
    if os.geteuid() != 0:  # root ignores directory permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(EdgecpmError, match="cannot write"):
                export(tiny_tied, ro / "out", "fp32", progress=False)
        finally:
            ro.chmod(0o700)


def test_interrupted_export_leaves_nothing(tiny_tied: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecpm.exporters import onnx_quant

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("edgecpm.exporters.onnx_decoder.quantize", boom)
    assert onnx_quant.quantize is not boom
    with pytest.raises(KeyboardInterrupt):
        export(tiny_tied, tmp_path / "out", "int4", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_onnx_and_errors(tiny_tied: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgecpm.cli import main

    out = tmp_path / "cli_int4"
    rc = main(
        [
            "export",
            str(tiny_tied),
            "--format",
            "onnx",
            "--quant",
            "int4",
            "--out",
            str(out),
            "--option",
            "block_size=64",
            "--json",
        ]
    )
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "onnx" and info["quant"] == "int4" and info["extra"]["block_size"] == 64
    assert edgecpm.load(out).backend.name == "onnxruntime"
    rc = main(["export", str(tiny_tied), "--format", "onnx", "--quant", "int3", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and "int3" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_threads_reach_the_session(tied_fp32: Path) -> None:
    lm = edgecpm.load(tied_fp32, threads=1)
    assert lm.backend.session.get_session_options().intra_op_num_threads == 1
