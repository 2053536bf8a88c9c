"""InfLLM v2 layers export as an `ai.edgecpm::InfLLMv2Attention` node whose local function runs real sparse
attention in standard ONNX ops; checked against the runtime's reference implementation (not dense)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from edgecpm.backends.onnx_backend import OnnxBackend
from edgecpm.config import SparseConfig
from edgecpm.exporters.onnx_exporter import export
from edgecpm.exporters.onnx_infllmv2 import sparse_attributes
from edgecpm.model import Model
from edgecpm.runtime_kernels import dense_attention, infllmv2_attention
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
from edgecpm.weights import open_checkpoint
from tests.onnx_common import all_nodes
from tests.tiny_sparse import SPARSE


@pytest.fixture(scope="module")
def sparse_ckpt() -> Path:
    return cached_checkpoint(SyntheticSpec(sparse_config=SPARSE, init_std=0.5, seed=11))


@pytest.fixture(scope="module")
def sparse_artifact(sparse_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx_sparse") / "art"
    export(sparse_ckpt, out, "fp32", progress=False)
    return out


def _function_model(artifact: Path) -> onnx.ModelProto:
    """The artifact's custom node alone, with its local function, as a runnable model."""
    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    node = next(n for n in all_nodes(model.graph) if n.domain == "ai.edgecpm")
    names = ("q", "k", "v", "ck")  # ck: the compressed keys of the complete windows (graph state)
    io = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["b", "h", "t" + n, "d"]) for n in names]
    out = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["b", "h", "t", "d"])
    single = helper.make_node(node.op_type, list(names), ["out"], domain=node.domain)
    single.attribute.extend(node.attribute)
    graph = helper.make_graph([single], "f", io, [out])
    return helper.make_model(
        graph,
        opset_imports=list(model.opset_import),
        functions=list(model.functions),
        ir_version=model.ir_version,
    )


def test_graph_has_custom_node_with_local_function(sparse_artifact: Path) -> None:
    model = onnx.load(str(sparse_artifact / "model.onnx"), load_external_data=False)
    custom = [n for n in all_nodes(model.graph) if n.domain == "ai.edgecpm"]
    assert len(custom) == 2 and {n.op_type for n in custom} == {"InfLLMv2Attention"}
    # below dense_len the layer runs the fused GroupQueryAttention instead: one If per sparse layer, never both
    switches = [n for n in model.graph.node if n.op_type == "If"]
    assert len(switches) == 2
    for node in switches:
        then, other = (a.g for a in sorted(node.attribute, key=lambda a: a.name, reverse=True))
        assert "GroupQueryAttention" in {n.op_type for n in then.node}
        assert "InfLLMv2Attention" in {n.op_type for n in other.node}
    attrs = {a.name: a.i for a in custom[0].attribute}
    assert attrs == sparse_attributes(SparseConfig(**SPARSE))
    (fn,) = model.functions
    assert (fn.domain, fn.name) == ("ai.edgecpm", "InfLLMv2Attention")
    body_ops = {n.op_type for n in fn.node} | {n.op_type for b in fn.node for a in b.attribute if a.g for n in a.g.node}
    assert {"TopK", "If", "Softmax"} <= body_ops  # block selection, dense fallback, attention


def _window_means(k: torch.Tensor, sp: SparseConfig) -> np.ndarray:
    """Compressed keys by definition: the mean of each complete window of kernel_size keys, every stride."""
    s = k.shape[2]
    starts = range(0, s - sp.kernel_size + 1, sp.kernel_stride)
    rows = [k[:, :, i : i + sp.kernel_size].mean(2) for i in starts]
    return (torch.stack(rows, 2) if rows else k[:, :, :0]).numpy()


def test_compressed_keys_are_graph_state(sparse_ckpt: Path, sparse_artifact: Path) -> None:
    """Each call extends past_key_values.N.compressed_keys by the windows it completed (never recompressing the
    prefix), whether the prompt comes at once or token by token, and truncation keeps the complete windows."""
    config, _ = open_checkpoint(sparse_ckpt)
    sp = config.sparse
    ids = np.random.default_rng(5).integers(0, config.vocab_size, 45).tolist()
    whole = OnnxBackend(sparse_artifact / "model.onnx", config)
    whole.prefill(ids)
    steps = OnnxBackend(sparse_artifact / "model.onnx", config)
    steps.prefill(ids[:1])
    for t in ids[1:]:
        steps.decode([t])
    names = [n for n in whole._past_names if n.endswith(".compressed_keys")]
    assert len(names) == 2
    for name in names:
        i = whole._past_names.index(name)
        keys = torch.from_numpy(whole._past[whole._past_names.index(name.replace("compressed_keys", "key"))].numpy())
        want = _window_means(keys, sp)
        assert want.shape[2] == (45 - sp.kernel_size) // sp.kernel_stride + 1
        assert np.abs(whole._past[i].numpy() - want).max() < 1e-5
        assert np.abs(steps._past[i].numpy() - want).max() < 1e-5
    whole.truncate(30)
    i = whole._past_names.index(names[0])
    assert whole._past[i].shape()[2] == (30 - sp.kernel_size) // sp.kernel_stride + 1


@pytest.mark.parametrize("t,s", [(1, 100), (7, 77), (1, 41), (5, 23), (40, 40)])
def test_function_matches_runtime_sparse_attention(sparse_artifact: Path, t: int, s: int) -> None:
    sess = ort.InferenceSession(_function_model(sparse_artifact).SerializeToString())
    sp = SparseConfig(**SPARSE)
    gen = torch.Generator().manual_seed(t * 1000 + s)
    q, k, v = (torch.randn(1, n, length, 16, generator=gen) for n, length in ((4, t), (2, s), (2, s)))
    ref = infllmv2_attention(q, k, v, sp, impl="reference").numpy()
    ck = _window_means(k, sp)
    got = sess.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "ck": ck})[0]
    assert np.abs(got - ref).max() < 1e-4
    dense_gap = np.abs(dense_attention(q, k, v).numpy() - ref).max()
    if s >= sp.dense_len:
        assert dense_gap > 1e-2  # sparse really differs from dense here, so the match above is meaningful
    else:
        assert dense_gap < 1e-5  # below dense_len the op is dense


def test_model_logits_match_sparse_reference(sparse_ckpt: Path, sparse_artifact: Path) -> None:
    config, source = open_checkpoint(sparse_ckpt)
    assert config.has_sparse_layers
    ids = np.random.default_rng(3).integers(0, config.vocab_size, 56 + 12)
    x = torch.as_tensor(ids)[None]
    with torch.no_grad():
        ref = Model.from_source(config, source)(x)[0].numpy()  # the reference model runs InfLLM v2
        dense = Model.from_source(config.with_sparse(None), source)(x)[0].numpy()
    backend = OnnxBackend(sparse_artifact / "model.onnx", config)
    got = np.concatenate(
        [backend.prefill(ids[:56].tolist(), all_logits=True)] + [backend.decode([int(t)]) for t in ids[56:]]
    )
    assert np.abs(got - ref).max() < 1e-3
    assert np.abs(dense - ref)[24:].max() > 1e-2  # past dense_len the sparse model is a different model


def test_sparse_artifact_runs_in_genai(sparse_ckpt: Path, sparse_artifact: Path) -> None:
    og = pytest.importorskip("onnxruntime_genai")
    config, source = open_checkpoint(sparse_ckpt)
    model = Model.from_source(config, source)
    ids = np.random.default_rng(4).integers(3, 500, 40).tolist()
    cache = model.new_cache()
    expected = []
    with torch.no_grad():
        logits = model.last_logits(torch.as_tensor(ids)[None], cache)[0]
        for _ in range(16):
            expected.append(int(logits.argmax()))
            logits = model.last_logits(torch.as_tensor([expected[-1]])[None], cache)[0]
    gm = og.Model(str(sparse_artifact))
    params = og.GeneratorParams(gm)
    params.set_search_options(max_length=len(ids) + 16, do_sample=False)
    gen = og.Generator(gm, params)
    gen.append_tokens(np.asarray(ids, dtype=np.int32))
    got = []
    while not gen.is_done():
        gen.generate_next_token()
        got.append(int(gen.get_next_tokens()[0]))
    stop = next((i + 1 for i, t in enumerate(expected) if t in config.eos_token_ids), 16)
    assert got == expected[:stop]
