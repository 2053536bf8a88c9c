"""GGUF export checked by llama.cpp itself against the torch reference `Model` on the same token ids."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import edgecpm
from edgecpm.backends.llamacpp_loader import open_llama
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
from edgecpm.weights import open_checkpoint

from .gguf_common import WIDE, llamacpp_logits, reference_logits, text_ids, top1

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")
VT = gguf.GGUFValueType


def export(src, tmp_path, quant, name=None):
    out = tmp_path / (name or f"{src.name}-{quant}")
    return edgecpm.export(src, format="gguf", out=out, quant=quant, progress=False)


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


@pytest.mark.parametrize("which", ["tiny_tied", "tiny_untied"])
def test_f32_logits_match_reference(which, request, outdir) -> None:
    src = request.getfixturevalue(which)
    art = export(src, outdir, "f32")
    ids = text_ids(src, 96)
    ref = reference_logits(src, ids)
    got = llamacpp_logits(art.model_file, ids)
    assert np.abs(got - ref).max() <= 5e-3, np.abs(got - ref).max()


@pytest.mark.parametrize("which", ["tiny_tied", "tiny_untied"])
def test_f16_and_q8_0_top1_agreement(which, request, outdir) -> None:
    src = request.getfixturevalue(which)
    ids = text_ids(src, 256)
    ref = reference_logits(src, ids)
    f16 = llamacpp_logits(export(src, outdir, "f16").model_file, ids)
    q8 = llamacpp_logits(export(src, outdir, "q8_0").model_file, ids)
    assert top1(f16, ref) >= 0.99
    assert top1(q8, ref) >= 0.97


def test_metadata_keys_have_llamacpp_types_and_values(tiny_tied, outdir) -> None:
    art = export(tiny_tied, outdir, "f32", "meta")
    cfg = json.loads((tiny_tied / "config.json").read_text())
    reader = gguf.GGUFReader(str(art.model_file))
    f = reader.fields
    expected = {  # key types llama.cpp's loader insists on (llama-model.cpp hparams, llama-vocab.cpp)
        "general.architecture": VT.STRING,
        "minicpm.block_count": VT.UINT32,
        "minicpm.context_length": VT.UINT32,
        "minicpm.embedding_length": VT.UINT32,
        "minicpm.feed_forward_length": VT.UINT32,
        "minicpm.attention.head_count": VT.UINT32,
        "minicpm.attention.head_count_kv": VT.UINT32,
        "minicpm.attention.layer_norm_rms_epsilon": VT.FLOAT32,
        "minicpm.rope.freq_base": VT.FLOAT32,
        "minicpm.rope.scaling.type": VT.STRING,
        "minicpm.embedding_scale": VT.FLOAT32,
        "minicpm.residual_scale": VT.FLOAT32,
        "minicpm.logit_scale": VT.FLOAT32,
        "general.file_type": VT.UINT32,
        "general.quantization_version": VT.UINT32,
        "tokenizer.ggml.model": VT.STRING,
        "tokenizer.ggml.bos_token_id": VT.UINT32,
        "tokenizer.ggml.eos_token_id": VT.UINT32,
        "tokenizer.ggml.add_bos_token": VT.BOOL,
        "tokenizer.chat_template": VT.STRING,
    }
    for key, vtype in expected.items():
        assert key in f, key
        assert f[key].types[0] == vtype, (key, f[key].types)
    arrays = {
        "tokenizer.ggml.tokens": VT.STRING,
        "tokenizer.ggml.scores": VT.FLOAT32,
        "tokenizer.ggml.token_type": VT.INT32,
    }
    for key, sub in arrays.items():
        assert f[key].types == [VT.ARRAY, sub], key
    assert f["general.architecture"].contents() == "minicpm"
    assert f["minicpm.rope.scaling.type"].contents() == "longrope"
    assert math.isclose(f["minicpm.embedding_scale"].contents(), cfg["scale_emb"], rel_tol=1e-6)
    assert math.isclose(
        f["minicpm.residual_scale"].contents(), cfg["scale_depth"] / math.sqrt(cfg["num_hidden_layers"]), rel_tol=1e-6
    )
    assert math.isclose(f["minicpm.logit_scale"].contents(), cfg["hidden_size"] / cfg["dim_model_base"], rel_tol=1e-6)
    tokens = f["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == cfg["vocab_size"] == len(set(tokens))
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied
    half = cfg["hidden_size"] // cfg["num_attention_heads"] // 2
    for kind in ("long", "short"):
        t = tensors[f"rope_factors_{kind}.weight"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_allclose(np.asarray(t.data), cfg["rope_scaling"][f"{kind}_factor"], rtol=1e-6)
        assert len(t.data) == half


def test_untied_writes_output_and_norms_stay_f32(tiny_untied, outdir) -> None:
    art = export(tiny_untied, outdir, "q8_0", "untied-q8")
    tensors = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(art.model_file)).tensors}
    assert tensors["output.weight"] == "Q8_0"
    assert all(v == "F32" for k, v in tensors.items() if "norm" in k or "rope_factors" in k)


@pytest.fixture(scope="module")
def wide_reference():
    src = cached_checkpoint(WIDE)
    ids = text_ids(src, 128)
    return src, ids, reference_logits(src, ids)


@pytest.mark.parametrize(
    "quant,kind,min_corr",
    [
        ("bf16", "BF16", 0.999),
        ("q4_0", "Q4_0", 0.97),
        ("q4_1", "Q4_1", 0.97),
        ("q5_0", "Q5_0", 0.98),
        ("q5_1", "Q5_1", 0.98),
        ("q4_k_m", "Q4_K", 0.97),
        ("q5_k_m", "Q5_K", 0.98),
        ("q6_k", "Q6_K", 0.99),
    ],
)
def test_every_quant_loads_and_tracks_reference(quant, kind, min_corr, wide_reference, outdir) -> None:
    src, ids, ref = wide_reference
    art = export(src, outdir, quant)
    types = art.manifest.extra["tensor_types"]
    assert kind in types, types
    got = llamacpp_logits(art.model_file, ids)
    assert np.isfinite(got).all()
    corr = float(np.corrcoef(got.ravel(), ref.ravel())[0, 1])
    assert corr >= min_corr, (quant, corr)


def test_longrope_extended_context_uses_long_factors_and_mscale(outdir) -> None:
    rng = np.random.default_rng(5)
    long_f = [float(x) for x in rng.uniform(1.0, 4.0, 8)]
    short_f = [float(x) for x in rng.uniform(1.0, 2.0, 8)]
    spec = SyntheticSpec(
        max_position_embeddings=1024,
        seed=4,
        extra_config={
            "rope_scaling": {
                "rope_type": "longrope",
                "long_factor": long_f,
                "short_factor": short_f,
                "original_max_position_embeddings": 256,
            }
        },
    )
    src = cached_checkpoint(spec)
    art = export(src, outdir, "f32", "longrope")
    ids = text_ids(src, 300)  # > original: the reference uses the long factors and mscale > 1
    ref = reference_logits(src, ids)
    got = llamacpp_logits(art.model_file, ids, n_ctx=1024)
    assert np.abs(got - ref).max() <= 5e-3, np.abs(got - ref).max()


def test_sparse_config_is_namespaced_metadata_read_back(outdir) -> None:
    sparse = {
        "kernel_size": 32,
        "kernel_stride": 16,
        "init_blocks": 1,
        "block_size": 64,
        "window_size": 128,
        "topk": 4,
        "use_nope": False,
        "dense_len": -1,
    }
    src = cached_checkpoint(SyntheticSpec(sparse_config=sparse))
    art = export(src, outdir, "f16", "sparse")
    f = gguf.GGUFReader(str(art.model_file)).fields
    assert f["minicpm.infllm_v2.topk"].types == [VT.UINT32]
    assert f["minicpm.infllm_v2.use_nope"].types == [VT.BOOL]
    assert f["minicpm.infllm_v2.dense_len"].contents() == -1
    config, _ = open_checkpoint(art.model_file)
    assert config.sparse is not None and vars(config.sparse) == sparse
    assert all(s.attention == "infllmv2" for s in config.layers)
    assert art.manifest.sparse == sparse
    ids = text_ids(src, 32)
    assert np.isfinite(llamacpp_logits(art.model_file, ids)).all()  # llama.cpp ignores the keys, runs dense


def test_shared_layers_are_duplicated_and_match_reference(outdir) -> None:
    src = cached_checkpoint(SyntheticSpec(num_layers=4, shared_unique_layers=2, ode_step=0.5, seed=6))
    art = export(src, outdir, "f32", "shared")
    ids = text_ids(src, 64)
    got = llamacpp_logits(art.model_file, ids)
    assert np.abs(got - reference_logits(src, ids)).max() <= 5e-3


def test_gguf_source_reexport_matches_reference(tiny_untied, outdir) -> None:
    first = export(tiny_untied, outdir, "f32", "first")
    second = export(first.model_file, outdir, "f16", "second")
    ids = text_ids(tiny_untied, 64)
    got = llamacpp_logits(second.model_file, ids)
    ref = reference_logits(tiny_untied, ids)
    assert top1(got, ref) >= 0.99
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    a, b = (gguf.GGUFReader(str(p)).fields for p in (first.model_file, second.model_file))
    for key in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type",
        "tokenizer.chat_template",
        "tokenizer.ggml.eos_token_id",
    ):
        assert a[key].contents() == b[key].contents(), key


def test_llamacpp_tokenizes_like_the_checkpoint_tokenizer(tiny_tied, outdir, wikitext) -> None:
    from edgecpm.tokenizer import load_tokenizer_dir

    art = export(tiny_tied, outdir, "q8_0", "tok")
    config, _ = open_checkpoint(tiny_tied)
    ours = load_tokenizer_dir(tiny_tied, bos_id=config.bos_token_id, eos_ids=config.eos_token_ids)
    llm = open_llama(str(art.model_file), n_ctx=64, vocab_only=True, verbose=False)
    text = wikitext[:3000] + " <|im_start|>user\nhi<|im_end|>"
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == ours.encode(text)
    im_end = config.eos_token_ids[-1]
    fields = gguf.GGUFReader(str(art.model_file)).fields
    assert fields["tokenizer.ggml.tokens"].contents()[im_end] == "<|im_end|>"
    assert fields["tokenizer.ggml.token_type"].contents()[im_end] == 3  # CONTROL
    cfg = json.loads((tiny_tied / "tokenizer_config.json").read_text())
    assert fields["tokenizer.chat_template"].contents() == cfg["chat_template"]


def test_artifact_manifest_load_and_inspect(tiny_tied, outdir) -> None:
    from edgecpm.commands.inspect_model import describe
    from edgecpm.exporters.manifest import read_manifest

    art = export(tiny_tied, outdir, "q4_0", "artifact")
    m = read_manifest(art.path)
    assert (m.format, m.quant, m.model_files) == ("gguf", "q4_0", ["model.gguf"])
    assert m.source_checksum.startswith("sha256:")
    assert m.model_config == open_checkpoint(tiny_tied)[0]
    assert describe(str(art.path))["quant"] == "q4_0"
    loaded = edgecpm.load(art.path)
    assert loaded.backend.name == "llama.cpp"
    assert loaded.generate("The", max_new_tokens=4) is not None
    single = edgecpm.export(tiny_tied, format="gguf", out=outdir / "single.gguf", quant="q8_0", progress=False)
    assert single.model_file == outdir / "single.gguf"
    assert json.loads((outdir / "single.gguf.edgecpm.json").read_text())["quant"] == "q8_0"


@pytest.mark.slow  # ~30 s: dequantizes and re-quantizes all of SmolLM2, two 512-token evals
def test_smollm2_gguf_to_q8_0_agrees_with_original(smollm2_path, tmp_path, wikitext) -> None:
    art = edgecpm.export(smollm2_path, format="gguf", out=tmp_path / "smol", quant="q8_0", progress=False)
    llm = open_llama(str(smollm2_path), n_ctx=64, vocab_only=True, verbose=False)
    ids = llm.tokenize(wikitext.encode(), add_bos=True)[:512]
    assert len(ids) == 512
    original = llamacpp_logits(smollm2_path, ids)
    exported = llamacpp_logits(art.model_file, ids)
    assert top1(exported, original) >= 0.95
