"""The planner: fits, refusals, predictions against independent arithmetic and real exported files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import edgecpm
from edgecpm.cli import main
from edgecpm.config import preset_config
from edgecpm.errors import EdgecpmError
from edgecpm.planning.cost_model import FORMAT_QUANTS, weight_sizes
from edgecpm.planning.planner import SCHEMA
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

GIB = 2**30
DOCS = Path(__file__).resolve().parent.parent / "docs" / "planner.md"


def test_8b_on_snapdragon_8_gen3_refuses_bf16_and_picks_4bit(capsys):
    plan = edgecpm.plan("minicpm4-8b", "snapdragon-8-gen3")
    assert plan.fits and plan.choice.quant.name in {"q4_0", "q4_k_m", "8da4w", "int4", "tq2_0", "tq1_0"}
    assert plan.choice.prediction.total_bytes <= plan.device.memory_budget_bytes
    bf16 = [c for c in plan.candidates if c.quant.name == "bf16"]
    assert bf16 and not any(c.fits for c in bf16) and "budget" in bf16[0].rejected
    # the CLI says so in words, and --json is the documented schema
    assert main(["plan", "minicpm4-8b", "--device", "snapdragon-8-gen3"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"llama\.cpp\s+bf16 .*REFUSED", text)
    assert main(["plan", "minicpm4-8b", "--device", "snapdragon-8-gen3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["schema"] == SCHEMA and d["fits"] and d["choice"]["quant"] == plan.choice.quant.name
    assert d["choice"]["draft"] is None and d["choice"]["draft_reason"]


def _keys(d, prefix=""):
    for k, v in d.items():
        yield prefix + k
        if isinstance(v, dict) and k not in ("params", "coefficients", "sparse_config"):
            yield from _keys(v, prefix + k + ".")


def test_every_json_field_is_documented():
    doc = DOCS.read_text()
    d = edgecpm.plan("minicpm4-8b", "snapdragon-8-gen3").to_dict()
    d["candidates"] = d["candidates"][0]
    missing = [k for k in _keys(d) if f"`{k}`" not in doc]
    assert not missing, f"undocumented plan fields: {missing}"


def test_forcing_bf16_is_refused_with_what_would_fit(capsys):
    plan = edgecpm.plan("minicpm4-8b", "snapdragon-8-gen3", quant="bf16")
    assert not plan.fits and plan.choice is None
    assert "nothing fits" in plan.reason and "GiB" in plan.reason
    assert any("q4_0" in s and "fits" in s for s in plan.suggestions)
    assert any("minicpm4-0.5b fits" in s for s in plan.suggestions)
    assert main(["plan", "minicpm4-8b", "--device", "snapdragon-8-gen3", "--quant", "bf16"]) == 1
    assert "would fit" in capsys.readouterr().out


def test_nothing_fits_explains_and_suggests():
    plan = edgecpm.plan("minicpm4-8b", "raspberry-pi-5", memory_gb=2, context=8192)
    assert not plan.fits
    assert any("ternary" in s for s in plan.suggestions)
    assert any(re.search(r"at least \d+ GiB", s) for s in plan.suggestions)


def test_weight_and_kv_memory_match_independent_arithmetic():
    config = preset_config("minicpm4-8b")
    plan = edgecpm.plan("minicpm4-8b", "h100", quant="fp16", backend="onnxruntime", context=32768)
    mem = plan.choice.prediction
    # fp16: two bytes per stored parameter (ModelConfig.parameter_count is the core's own count)
    assert mem.weights_bytes == pytest.approx(config.parameter_count() * 2, rel=1e-3)
    # KV: K and V, 32 layers x 2 KV heads x 128 dims x 2 bytes per token, plus one compressed key per 16 tokens
    # (ONNX keeps the InfLLM v2 op)
    dense_kv = 2 * 32 * 2 * 128 * 2 * 32768
    assert mem.kv_bytes == pytest.approx(dense_kv * (1 + 0.5 / 16), rel=1e-6)
    # llama.cpp runs InfLLM v2 layers dense (GGUF keeps the settings as metadata): no compressed keys
    gguf = edgecpm.plan("minicpm4-8b", "h100", quant="bf16", backend="llama.cpp", context=32768)
    assert gguf.choice.prediction.kv_bytes == pytest.approx(dense_kv, rel=1e-6)
    assert gguf.attention["kind"] == "dense" and "llama.cpp runs sparse layers dense" in gguf.attention["reason"]
    # MiniCPM4-8B bf16 weights: ~16.4 GB (2 bytes per parameter)
    assert mem.weights_bytes / 1e9 == pytest.approx(16.4, rel=0.02)


def test_decode_roofline_on_a_gpu_matches_the_reference_bound():
    """Roofline: RTX 4090 (1008 GB/s, docs/device-sources.md) bounds 8B INT4 decode at ~219 tok/s (weights only)."""
    plan = edgecpm.plan("minicpm4-8b", "rtx-4090", quant="q4_0", context=128)
    bound = 1008e9 / plan.choice.prediction.decode_bytes_per_token
    assert bound == pytest.approx(219, rel=0.1)
    assert plan.choice.prediction.decode_tokens_per_s < bound


def test_sparse_attention_is_chosen_past_dense_len_and_predicted_faster():
    short = edgecpm.plan("minicpm4-8b", "jetson-agx-orin-64gb", context=4096, backend="onnxruntime")
    assert short.attention["kind"] == "infllmv2" and "dense_len" in short.attention["reason"]
    p = short.choice.prediction
    assert p.decode_tokens_per_s == pytest.approx(p.decode_tokens_per_s_dense)
    long = edgecpm.plan("minicpm4-8b", "jetson-agx-orin-64gb", context=131072)
    # llama.cpp would run the sparse layers dense, so at 128K the ONNX export (sparse op kept) is faster
    assert long.choice.backend == "onnxruntime"
    p = long.choice.prediction
    assert long.attention["params"]["topk"] == 64 and long.attention["attended_tokens_per_query"] == 6144
    assert p.decode_tokens_per_s > 1.3 * p.decode_tokens_per_s_dense
    assert any("native" in w for w in long.warnings)
    dense = edgecpm.plan("minicpm4-0.5b", "jetson-agx-orin-64gb")
    assert dense.attention["kind"] == "dense" and "sparse_config" in dense.attention["reason"]


def test_attention_choice_shows_both_predictions_with_the_kv_read_term():
    """Sparse vs dense from the cost model: the KV bytes each reads, checked against hand arithmetic."""
    plan = edgecpm.plan("minicpm4-8b", "jetson-agx-orin-64gb", context=32768, backend="onnxruntime")
    cfg = preset_config("minicpm4-8b")
    a, q = plan.attention, plan.choice.quant
    assert a["kind"] == "infllmv2" and "ai.edgecpm InfLLMv2Attention" in a["kernel"]
    per_token_one_side = cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * q.kv_bytes  # K or V of one token
    budget = 64 * 64 + 2048  # topk * block_size + window_size, published sparse_config
    compressed = per_token_one_side * 32768 / 16  # one compressed key per kernel_stride tokens
    assert a["predicted"]["dense"]["kv_read_bytes_per_token"] == pytest.approx(2 * per_token_one_side * 32768)
    assert a["predicted"]["sparse"]["kv_read_bytes_per_token"] == pytest.approx(
        2 * per_token_one_side * budget + compressed
    )
    assert a["predicted"]["sparse"]["decode_tokens_per_s"] > a["predicted"]["dense"]["decode_tokens_per_s"]
    assert a["predicted"]["sparse"]["prefill_tokens_per_s"] > a["predicted"]["dense"]["prefill_tokens_per_s"]
    assert "sparse vs" in a["reason"] and "MiB" in a["reason"]
    from edgecpm.planning.planner import attention_kernel

    assert "compiled C++" in attention_kernel("torch", "cpu")
    assert "Triton kernel is opt-in" in attention_kernel("torch", "gpu")  # never run on a GPU: not the default


def test_dense_is_planned_when_the_cost_model_predicts_it_faster():
    """A budget as large as the context reads more than dense (plus compressed keys): dense is planned."""
    from dataclasses import replace as dc_replace

    cfg = preset_config("minicpm4-8b")
    wide = dc_replace(cfg, sparse=dc_replace(cfg.sparse, topk=1024, dense_len=4096))  # 64K-token budget
    plan = edgecpm.plan(wide, "jetson-agx-orin-64gb", context=16384, backend="onnxruntime")
    assert plan.attention["kind"] == "dense" and "dense is faster" in plan.attention["reason"]
    pred = plan.attention["predicted"]
    assert pred["dense"]["decode_tokens_per_s"] > pred["sparse"]["decode_tokens_per_s"]
    assert plan.choice.prediction.decode_tokens_per_s == pytest.approx(pred["dense"]["decode_tokens_per_s"], rel=1e-3)
    forced = edgecpm.plan(wide, "jetson-agx-orin-64gb", context=16384, backend="onnxruntime", sparse=True)
    assert forced.attention["kind"] == "infllmv2"  # an explicit request is kept


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(context=0), "context is 0"),
        (dict(context=10**7), "impossible"),
        (dict(quant="q3_xx"), "unknown quant 'q3_xx'"),
        (dict(quant="tq2_0"), "not ternary"),
        (dict(backend="torch"), "does not run on snapdragon-8-gen3"),
        (dict(prompt_tokens=9000, context=4096), "prompt_tokens"),
        (dict(memory_gb=-1), "memory_gb"),
    ],
)
def test_impossible_requests_are_clear_errors(kwargs, message):
    with pytest.raises(EdgecpmError, match=re.escape(message)):
        edgecpm.plan("minicpm4-8b", "snapdragon-8-gen3", **kwargs)


def test_bad_model_argument():
    with pytest.raises(EdgecpmError, match="neither a path nor a preset"):
        edgecpm.plan("minicpm5-99b", "h100")
    assert main(["plan", "/nonexistent/model", "--device", "h100"]) == 2


def test_ternary_checkpoint_plans_ternary_gguf():
    from .gguf_common import row_ternary_checkpoint

    ckpt = row_ternary_checkpoint()  # one scale per row: what TQ1_0/TQ2_0 store losslessly
    plan = edgecpm.plan(ckpt, "raspberry-pi-5", context=1024)
    tq = {c.quant.name: c for c in plan.candidates if c.quant.ternary_only}
    assert set(tq) == {"tq1_0", "tq2_0", "tq2"} and all(c.fits for c in tq.values())  # tq2: ONNX 2-bit
    assert tq["tq2"].format == "onnx" and tq["tq2_0"].format == "gguf"
    assert plan.choice.quant.quality == 0


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_predicted_weight_bytes_match_a_real_exported_gguf(tmp_path, quant):
    """The size table against a file written by the GGUF exporter (its tokenizer metadata excluded by margin)."""
    pytest.importorskip("edgecpm.exporters.gguf_exporter")
    ckpt = cached_checkpoint(
        SyntheticSpec(
            hidden_size=512, intermediate_size=1024, num_layers=3, num_heads=8, num_kv_heads=2, tied=False, seed=5
        )
    )
    artifact = edgecpm.export(ckpt, format="gguf", out=tmp_path / quant, quant=quant)
    from edgecpm.exporters.manifest import read_manifest

    manifest = read_manifest(tmp_path / quant)
    size = (tmp_path / quant / manifest.model_files[0]).stat().st_size
    predicted = weight_sizes(edgecpm.plan(ckpt, "h100").model.config, FORMAT_QUANTS["gguf"][quant]).stored_bytes
    assert predicted == pytest.approx(size, rel=0.03), (predicted, size)
    # an exported artifact is planned with its own format and quant
    plan = edgecpm.plan(tmp_path / quant, "raspberry-pi-5", context=512)
    assert {c.backend for c in plan.candidates} == {"llama.cpp"}
    assert plan.choice.quant.name == quant and plan.choice.prediction.weights_bytes == pytest.approx(size, rel=0.03)
    del artifact


def test_host_plan_uses_stored_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECPM_CALIBRATION_DIR", str(tmp_path))
    from edgecpm.device_profiles.host import probe
    from edgecpm.device_profiles.host_store import calibration_path, load_calibration, save_coefficients

    data = probe(measure=False)
    data["bandwidth"] = {"read_gbs": 10.0, "copy_gbs": 10.0, "buffer_mb": 1}
    data["compute"] = {"fp32_gflops": 100.0}
    coeffs = {
        "bandwidth_efficiency": 0.5,
        "compute_efficiency": 0.5,
        "layer_overhead_s": 0.0,
        "token_overhead_s": 0.0,
        "runtime_bytes": 0.0,
        "source": "x",
    }
    save_coefficients(data, {"torch/f32": {"coefficients": coeffs, "quant": "f32", "model": "m"}})
    plan = edgecpm.plan("minicpm4-0.5b", "host", backend="torch", quant="f32", context=128)
    p = plan.choice.prediction
    assert "calibrated" in p.coefficients.source
    # 10 GB/s x 0.5 efficiency, zero overheads: tok/s is exactly 5e9 / bytes moved (+ attention compute)
    assert p.decode_tokens_per_s == pytest.approx(5e9 / p.decode_bytes_per_token, rel=0.01)
    assert load_calibration(data["host_id"])["backends"]["torch/f32"]
    calibration_path(data["host_id"]).write_text("{not json")
    with pytest.raises(EdgecpmError, match="corrupt"):
        edgecpm.plan("minicpm4-0.5b", "host")


def test_calibration_fit_recovers_known_coefficients():
    """Timings generated from known efficiencies (by hand, not by the cost model) are inverted exactly."""
    from edgecpm.planning.calibration import fit_coefficients

    config = preset_config("minicpm4-0.5b")
    q = FORMAT_QUANTS["hf"]["f32"]
    bw, peak, bw_eff, attn_eff, ovh = 20.0, 50.0, 0.6, 0.2, 1e-4
    streamed = 4 * (24 * (3 * 1024 * 4096 + 2 * 1024 * 1024 + 2 * 1024 * 128) + 73448 * 1024 + 1024)
    decode = []
    for c in (128, 512, 1024):
        kv = 2 * 24 * 2 * 64 * 4 * c
        flops = 4 * 24 * 16 * 64 * c
        decode.append((c, (streamed + kv) / (bw * 1e9 * bw_eff) + flops / (peak * 1e9 * attn_eff) + 24 * ovh))
    fit = fit_coefficients(config, q, "torch", bw, peak, decode, [], ovh, None, peak)
    assert fit.bandwidth_efficiency == pytest.approx(bw_eff, rel=1e-3)
    assert fit.attention_efficiency == pytest.approx(attn_eff, rel=1e-3)
