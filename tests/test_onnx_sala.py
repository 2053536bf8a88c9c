"""MiniCPM-SALA (lightning + softmax layers) exported to ONNX, checked by onnxruntime against the reference
model: each lightning layer's recurrent state is a graph input/output pair, so chunked prefill, token-by-token
decode, rollback by replay and the InfLLM v2 sparse layers all continue correctly."""

from __future__ import annotations

import json
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
from tests.onnx_common import all_nodes
from tests.tiny_sparse import SALA, SALA_SPARSE, SPARSE

pytest.importorskip("onnxruntime")


# init_std 0.8: large enough random weights that greedy decoding does not repeat one token
SALA_GENAI = SyntheticSpec(sala_mixers=("minicpm4", "lightning-attn"), num_layers=4, init_std=0.8, seed=5)
SALA_GENAI_SPARSE = SyntheticSpec(
    sala_mixers=("minicpm4", "lightning-attn"), num_layers=4, sparse_config=SPARSE, init_std=0.8, seed=5
)


def _reference(ckpt: Path, ids: np.ndarray) -> np.ndarray:
    """One full-sequence forward of the reference model (no cache: the chunked lightning kernel)."""
    config, source = open_checkpoint(ckpt)
    with torch.no_grad():
        return Model.from_source(config, source)(torch.as_tensor(ids)[None])[0].numpy()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx_sala") / "art"
    export(cached_checkpoint(SALA), out, "fp32", progress=False)
    return out


def _backend(artifact: Path, spec: SyntheticSpec = SALA) -> OnnxBackend:
    config, _ = open_checkpoint(cached_checkpoint(spec))
    return OnnxBackend(artifact / "model.onnx", config)


def test_graph_carries_recurrent_state_for_lightning_layers_and_kv_for_softmax_layers(artifact: Path) -> None:
    config, _ = open_checkpoint(cached_checkpoint(SALA))
    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    lc = config.lightning
    for i, spec in enumerate(config.layers):
        if spec.attention == "lightning":
            dims = inputs[f"past_key_values.{i}.recurrent_state"].type.tensor_type.shape.dim
            assert [d.dim_value for d in dims][1:] == [lc.num_heads, lc.head_dim, lc.head_dim]
            assert f"present.{i}.recurrent_state" in outputs and f"past_key_values.{i}.key" not in inputs
        else:
            assert f"past_key_values.{i}.key" in inputs and f"present.{i}.value" in outputs
    # HyPE: the softmax layers are NoPE, so no LongRoPE table; the lightning layers' RoPE is computed in-graph
    names = {t.name for t in model.graph.initializer}
    assert "cos_cache" not in names and "lightning_inv_freq" in names
    genai = json.loads((artifact / "genai_config.json").read_text())["model"]["decoder"]
    assert genai["inputs"]["past_recurrent_names"] == "past_key_values.%d.recurrent_state"
    assert genai["outputs"]["present_recurrent_names"] == "present.%d.recurrent_state"


def test_prefill_and_decode_match_reference(artifact: Path) -> None:
    ids = np.random.default_rng(3).integers(3, 600, 40)
    want = _reference(cached_checkpoint(SALA), ids)
    be = _backend(artifact)
    got = np.concatenate([be.prefill(ids[:30].tolist(), all_logits=True)] + [be.decode([int(t)]) for t in ids[30:]])
    assert np.abs(got - want).max() < 1e-3


def test_chunked_prefill_then_decode_equals_step_by_step_decode(artifact: Path) -> None:
    ids = [int(x) for x in np.random.default_rng(4).integers(3, 600, 36)]
    chunked = _backend(artifact)
    rows = [chunked.prefill(ids[:16], all_logits=True), chunked.decode(ids[16:30])]  # two calls of 16 + 14
    rows += [chunked.decode([t]) for t in ids[30:]]
    steps = _backend(artifact)
    one = [steps.prefill(ids[:1], all_logits=True)] + [steps.decode([t]) for t in ids[1:]]
    assert np.abs(np.concatenate(rows) - np.concatenate(one)).max() < 1e-4


def test_long_prompt_runs_in_chunks_and_rollback_replays(artifact: Path) -> None:
    from edgecpm.backends.onnx_backend import CHUNK

    ids = np.random.default_rng(5).integers(3, 600, CHUNK + 44)
    want = _reference(cached_checkpoint(SALA), ids)
    be = _backend(artifact)
    n = CHUNK + 30
    assert np.abs(be.prefill(ids[:n].tolist(), all_logits=True) - want[:n]).max() < 1e-3
    # a speculative verify of 8 tokens, 3 accepted: the state goes back to n + 3 by replaying the call
    be.decode(ids[n : n + 8].tolist())
    be.truncate(n + 3)
    assert be.n_past == n + 3
    assert np.abs(be.decode(ids[n + 3 : n + 14].tolist()) - want[n + 3 : n + 14]).max() < 1e-3
    with pytest.raises(EdgecpmError, match="cannot roll a lightning-attention"):
        be.truncate(n)


def test_sparse_softmax_layers_and_shared_kv_lightning_heads_match_reference(tmp_path: Path) -> None:
    ckpt = cached_checkpoint(SALA_SPARSE)
    config, _ = open_checkpoint(ckpt)
    assert config.has_sparse_layers and config.lightning.num_kv_heads == 2
    export(ckpt, tmp_path / "art", "fp32", progress=False)
    model = onnx.load(str(tmp_path / "art" / "model.onnx"), load_external_data=False)
    assert any(n.op_type == "InfLLMv2Attention" for n in all_nodes(model.graph))
    ids = np.random.default_rng(6).integers(3, 600, 64)
    want = _reference(ckpt, ids)
    be = _backend(tmp_path / "art", SALA_SPARSE)
    got = np.concatenate([be.prefill(ids[:40].tolist(), all_logits=True)] + [be.decode([int(t)]) for t in ids[40:]])
    assert np.abs(got - want).max() < 1e-3


def test_load_and_generate_match_the_torch_backend(artifact: Path) -> None:
    lm, ref = edgecpm.load(artifact), edgecpm.load(cached_checkpoint(SALA))
    assert lm.backend.name == "onnxruntime"
    got = lm.generate_result("The tower is", max_new_tokens=12).token_ids
    assert got == ref.generate_result("The tower is", max_new_tokens=12).token_ids


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(SALA_GENAI, id="gqa_softmax_layers"),
        pytest.param(SALA_GENAI_SPARSE, id="sparse_softmax_layers", marks=pytest.mark.slow),  # ~30 s: traces InfLLM v2
    ],
)
def test_genai_greedy_32_tokens_equal_torch_backend(spec: SyntheticSpec, tmp_path: Path) -> None:
    """ONNX Runtime GenAI runs the artifact from its genai_config (recurrent states found from the graph)."""
    og = pytest.importorskip("onnxruntime_genai")
    ckpt = cached_checkpoint(spec)
    export(ckpt, tmp_path / "art", "fp32", progress=False)
    ref = edgecpm.load(ckpt)
    ids = ref.tokenizer.encode("The tower is 324 metres tall, about the same height")
    logits, want = ref.backend.prefill(ids), []
    for _ in range(32):
        want.append(int(np.argmax(logits)))
        logits = ref.backend.decode([want[-1]])[-1]
    model = og.Model(str(tmp_path / "art"))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 32, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(ids, dtype=np.int32))
    got = []
    while not gen.is_done():
        gen.generate_next_token()
        got.append(int(gen.get_next_tokens()[0]))
    assert got == want and len(set(want)) > 8  # no EOS in 32 tokens, and a varied sequence
