"""BitCPM4 ternary weights packed inside ONNX (quant tq2: 2-bit MatMulNBits with the checkpoint's own codes and
scales), checked in onnxruntime: lossless with fp32 activations, and within the int8 activation-quantization
bound with accuracy_level 4 (what MLAS runs fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from edgecpm.backends.onnx_backend import OnnxBackend
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.onnx_decoder import OnnxOptions
from edgecpm.exporters.onnx_exporter import export
from edgecpm.exporters.onnx_reference import effective_weights
from edgecpm.model import Model
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
from edgecpm.weights import open_checkpoint

ort = pytest.importorskip("onnxruntime")

TERNARY = SyntheticSpec(ternary=True, seed=4)  # BitCPM-CANN style: absmean scale per 32 values, stored bf16
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tq2(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("onnx_tq2")
    arts = {}
    for level in (0, 4):
        arts[level] = root / f"acc{level}"
        export(cached_checkpoint(TERNARY), arts[level], "tq2", progress=False, accuracy_level=level)
    return arts


def test_ternary_linears_are_2_bit_matmulnbits_with_their_own_values(tq2: dict[int, Path]) -> None:
    config, source = open_checkpoint(cached_checkpoint(TERNARY))
    model = onnx.load(str(tq2[4] / "model.onnx"), load_external_data=False)
    nbits = {n.name: {a.name: a.i for a in n.attribute} for n in model.graph.node if n.op_type == "MatMulNBits"}
    two_bit = [a for a in nbits.values() if a["bits"] == 2]
    assert len(two_bit) == 4 * config.num_layers  # packed qkv, o_proj, packed gate/up, down: all ternary
    assert all(a["block_size"] == 32 for a in two_bit)  # the checkpoint's per-32 scales, one block each
    # the weights the graph computes with are the checkpoint's ternary matrices, bit for bit
    _, eff = effective_weights(config, source, OnnxOptions(quant="tq2"))
    for i in range(config.num_layers):
        for name in LINEARS:
            part = "mlp" if name.endswith(("gate_proj", "up_proj", "down_proj")) else "self_attn"
            key = f"model.layers.{i}.{part}.{name}.weight"
            assert torch.equal(eff.get(key), source.get(key).float()), key


def test_tq2_with_fp32_activations_matches_reference(tq2: dict[int, Path]) -> None:
    config, source = open_checkpoint(cached_checkpoint(TERNARY))
    ref_config, eff = effective_weights(config, source, OnnxOptions(quant="tq2"))  # the 8-bit head
    ids = np.random.default_rng(1).integers(3, 600, 32)
    with torch.no_grad():
        want = Model.from_source(ref_config, eff)(torch.as_tensor(ids)[None])[0].numpy()
    got = OnnxBackend(tq2[0] / "model.onnx", config).prefill(ids.tolist(), all_logits=True)
    assert np.abs(got - want).max() < 1e-3


def _matmulnbits(model: onnx.ModelProto, node: onnx.NodeProto) -> ort.InferenceSession:
    """One MatMulNBits node of the artifact, with its packed initializers, as a runnable model."""
    inits = {t.name: t for t in model.graph.initializer}
    attrs = {a.name: a.i for a in node.attribute}
    a = helper.make_tensor_value_info("A", onnx.TensorProto.FLOAT, [None, attrs["K"]])
    y = helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [None, attrs["N"]])
    single = helper.make_node("MatMulNBits", ["A", *node.input[1:]], ["Y"], domain="com.microsoft")
    single.attribute.extend(node.attribute)
    graph = helper.make_graph([single], "one", [a], [y], [inits[n] for n in node.input[1:]])
    m = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_tq2_matmuls_stay_within_the_int8_activation_bound(tq2: dict[int, Path]) -> None:
    """accuracy_level 4: MLAS quantizes each block of `block_size` activations to int8 (scale = max|x|/127), so
    |y - x Wᵀ| <= Σ_blocks max|x_b| / 254 · Σ_b |W| per output (plus fp32 rounding)."""
    config, source = open_checkpoint(cached_checkpoint(TERNARY))
    model = onnx.load(str(tq2[4] / "model.onnx"))  # with the external weights
    stems = {"model.layers.0.mlp.down": ["model.layers.0.mlp.down_proj.weight"]}
    stems["model.layers.1.self_attn.qkv"] = [
        f"model.layers.1.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj")
    ]
    rng = np.random.default_rng(2)
    for stem, names in stems.items():
        node = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and n.input[1] == f"{stem}.t2.B")
        w = np.concatenate([source.get(n).float().numpy() for n in names]).astype(np.float64)
        block = {a.name: a.i for a in node.attribute}["block_size"]
        x = (rng.standard_normal((6, w.shape[1])) * rng.uniform(0.1, 10.0, (6, 1))).astype(np.float32)
        got = _matmulnbits(model, node).run(None, {"A": x})[0]
        want = x.astype(np.float64) @ w.T
        xmax = np.abs(x).reshape(6, -1, block).max(-1)  # [M, blocks]
        wsum = np.abs(w).reshape(w.shape[0], -1, block).sum(-1)  # [N, blocks]
        bound = (xmax / 254) @ wsum.T + 1e-5 * np.abs(want).max()
        assert (np.abs(got - want) <= bound).all(), stem
        assert np.abs(got - want).max() > 1e-6  # int8 activations are really in use (not the fp32 fallback)


def test_tq2_refuses_a_model_without_ternary_weights(tiny_tied: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgecpmError, match=r"quant tq2 stores ternary weights; .* is not ternary"):
        export(tiny_tied, tmp_path / "out", "tq2", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # an 8da4w ExecuTorch export: ~1-3 min on a shared 2-core machine
def test_executorch_8da4w_holds_ternary_weights_exactly_and_runs_them(tmp_path: Path) -> None:
    """8da4w gives each ternary linear its own scales (int4 codes exactly -1, 0, +1); the XNNPACK program runs
    those weights with int8 dynamic per-token activations: it matches the same module run eagerly by torchao
    (exact weights + the same activation quantization) as closely as test_executorch_quant requires."""
    pytest.importorskip("executorch.runtime")
    import edgecpm
    from edgecpm.exporters.executorch_exporter import build_module
    from edgecpm.exporters.registry import run_export

    ckpt = cached_checkpoint(TERNARY)
    config, source = open_checkpoint(ckpt)
    module, report = build_module(config, source, 64, "8da4w", group_size=32)
    assert len(report.ternary_exact) == 7 * config.num_layers  # every decoder linear; the LM head is not ternary
    for fqn in report.ternary_exact:
        w = module.get_submodule(fqn).weight
        assert set(w.qdata.unique().tolist()) <= {-1, 0, 1}
        assert (w.dequantize() != 0).float().mean() > 0.3  # a real ternary matrix, not zeros
    q_proj = next(f for f in report.ternary_exact if f.endswith("q_proj"))  # layer 0's (module order)
    want_w = source.get("model.layers.0.self_attn.q_proj.weight").float()
    assert torch.equal(module.get_submodule(q_proj).weight.dequantize(), want_w)  # the checkpoint's own values

    run_export(ckpt, "executorch", tmp_path / "et", quant="8da4w", progress=False, max_seq_len=16, max_context_len=64)
    et = edgecpm.load(tmp_path / "et")
    ids = [int(x) for x in np.random.default_rng(1).integers(3, 600, 26)]
    got = [et.backend.prefill(ids[:10])]
    with torch.no_grad():
        want = [module(torch.tensor([ids[:10]]), torch.tensor([0]))[0].numpy()]
        for i in range(10, 26):
            got.append(et.backend.decode([ids[i]])[0])
            want.append(module(torch.tensor([[ids[i]]]), torch.tensor([i]))[0].numpy())
    got, want = np.stack(got), np.stack(want)
    span = want.max() - want.min()
    assert np.abs(got - want).max() < 0.05 * span
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
