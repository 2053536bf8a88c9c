"""int4 / int8 / fp16 ONNX exports compute exactly what they claim: onnxruntime reproduces the reference model
run on the same stored (quantized, then dequantized) weights; and int4 quantizes as well as llama.cpp q4_0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgecpm.backends.onnx_backend import OnnxBackend
from edgecpm.exporters.onnx_decoder import OnnxOptions
from edgecpm.exporters.onnx_exporter import export
from edgecpm.exporters.onnx_quant import quantize
from edgecpm.exporters.onnx_reference import effective_weights
from edgecpm.model import Model
from edgecpm.weights import open_checkpoint


@pytest.mark.parametrize("bits,block,k", [(4, 32, 96), (4, 128, 576), (8, 32, 80), (4, 16, 50)])
def test_packing_is_what_matmulnbits_computes(bits: int, block: int, k: int) -> None:
    rng = np.random.default_rng(bits * block + k)
    w = rng.standard_normal((24, k)).astype(np.float32)
    bq = quantize(w, bits, block)
    deq = bq.dequantize()
    # round-to-nearest within half a step, except the clipped top code (error below one step)
    steps = np.repeat(np.abs(bq.scales), block, axis=1)[:, :k]
    err = np.abs(w - deq)
    assert np.all(err <= steps + 1e-6) and np.mean(err <= steps / 2 + 1e-6) > 0.97
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "S"],
        ["Y"],
        domain="com.microsoft",
        K=k,
        N=24,
        bits=bits,
        block_size=block,
        accuracy_level=0,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", 24])],
        [numpy_helper.from_array(bq.packed, "B"), numpy_helper.from_array(bq.scales, "S")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)], ir_version=10
    )
    a = rng.standard_normal((5, k)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"A": a})[0]
    np.testing.assert_allclose(y, a @ deq.T, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "quant,block,head",
    [("int4", 32, None), ("int4", 128, None), ("int4", 32, 4), ("int8", 32, None), ("fp16", 32, None)],
)
def test_quantized_graph_reproduces_reference_on_stored_weights(
    quant: str, block: int, head: int | None, tiny_untied: Path, tiny_tied: Path, tmp_path: Path
) -> None:
    for ckpt in (tiny_tied, tiny_untied):
        out = tmp_path / ckpt.name
        export(ckpt, out, quant, progress=False, block_size=block, accuracy_level=0, lm_head_bits=head)
        config, source = open_checkpoint(ckpt)
        eff_config, eff_source = effective_weights(
            config, source, OnnxOptions(quant=quant, block_size=block, lm_head_bits=head)
        )
        ref_model = Model.from_source(eff_config, eff_source)
        orig_model = Model.from_source(config, source)
        ids = np.random.default_rng(5).integers(0, config.vocab_size, 40)
        with torch.no_grad():
            ref = ref_model(torch.as_tensor(ids)[None])[0].numpy()
            orig = orig_model(torch.as_tensor(ids)[None])[0].numpy()
        backend = OnnxBackend(out / "model.onnx", config)
        got = np.concatenate(
            [backend.prefill(ids[:24].tolist(), all_logits=True)] + [backend.decode([int(t)]) for t in ids[24:]]
        )
        assert np.abs(got - ref).max() < 1e-3
        if quant != "fp16":  # bf16 sources are exact in fp16; integer quantization really changes the model
            assert np.abs(orig - ref).max() > 1e-2


def test_int4_graph_uses_matmulnbits(tiny_tied: Path, tmp_path: Path) -> None:
    export(tiny_tied, tmp_path / "a", "int4", progress=False, block_size=64)
    model = onnx.load(str(tmp_path / "a" / "model.onnx"), load_external_data=False)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert not [n for n in model.graph.node if n.op_type == "MatMul"]
    bits = sorted({a.i for n in nbits for a in n.attribute if a.name == "bits"})
    assert bits == [4, 8]  # blocks at 4 bits, the (tied) head at 8 bits like llama.cpp's q4_0 output
    assert {a.i for n in nbits for a in n.attribute if a.name == "block_size"} == {64}
    gather = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(gather) == 1 and gather[0].input[2] == nbits[-1].input[2]  # tied table shared with the head
    inits = {t.name: t for t in model.graph.initializer}
    assert all(inits[n.input[1]].data_type == TensorProto.UINT8 for n in nbits)


def _kl_top1(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(got)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean()), float((ref.argmax(-1) == got.argmax(-1)).mean())


@pytest.mark.slow
def test_smollm2_int4_quantizes_as_well_as_llamacpp_q4_0(smollm2_path: Path, wikitext: str, tmp_path: Path) -> None:
    """Real weights (SmolLM2-135M, hidden 576), 512 positions of real text, default int4 export vs the same
    weights quantized by edgecpm's GGUF exporter to q4_0 and run by llama.cpp; reference = fp32 torch."""
    import edgecpm

    config, source = open_checkpoint(smollm2_path)
    lm = edgecpm.load(smollm2_path)
    ids = lm.tokenizer.encode(wikitext)[:512]
    with torch.no_grad():
        ref = Model.from_source(config, source)(torch.as_tensor(ids)[None])[0].numpy()
    export(smollm2_path, tmp_path / "onnx", "int4", progress=False)  # defaults: block 32, acc 4, int8 head
    onnx_logits = OnnxBackend(tmp_path / "onnx" / "model.onnx", config).prefill(ids, all_logits=True)
    art = edgecpm.export(smollm2_path, format="gguf", out=tmp_path / "gguf", quant="q4_0", progress=False)
    llama = edgecpm.load(art.model_file, backend="llama.cpp").backend.prefill(ids, all_logits=True)
    kl_onnx, top1_onnx = _kl_top1(ref, onnx_logits)
    kl_q4, top1_q4 = _kl_top1(ref, llama)
    assert kl_q4 > 0.01  # q4_0 really is lossy on this model
    assert kl_onnx <= 1.1 * kl_q4, (kl_onnx, kl_q4, top1_onnx, top1_q4)
