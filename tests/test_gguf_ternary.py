"""TQ1_0 / TQ2_0: lossless on ternary weights (checked by reading the file back and by llama.cpp), refused
with a message naming the tensor otherwise."""

from __future__ import annotations

import numpy as np
import pytest

import edgecpm
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
from edgecpm.weights import open_checkpoint

from .gguf_common import WIDE, llamacpp_logits, reference_logits, row_ternary_checkpoint, text_ids, top1

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def ternary_src():
    return row_ternary_checkpoint(WIDE)


@pytest.mark.parametrize("quant", ["tq1_0", "tq2_0"])
def test_ternary_export_is_lossless_and_runs_in_llamacpp(quant, ternary_src, tmp_path) -> None:
    art = edgecpm.export(ternary_src, format="gguf", out=tmp_path / quant, quant=quant, progress=False)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(art.model_file)).tensors}
    assert types["blk.0.attn_q.weight"] == quant.upper()
    assert types["blk.1.ffn_down.weight"] == quant.upper()
    assert types["token_embd.weight"] == "Q8_0"
    # read the packed trits back with gguf's own dequantizer: equal to the source up to fp16 scale rounding
    _, src = open_checkpoint(ternary_src)
    _, back = open_checkpoint(art.model_file)
    for name in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ):
        a, b = src.get(name).float().numpy(), back.get(name).numpy()
        assert np.array_equal(np.sign(a), np.sign(b)), name
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=0)
    ids = text_ids(ternary_src, 128)
    ref = reference_logits(ternary_src, ids)
    got = llamacpp_logits(art.model_file, ids)
    assert top1(got, ref) >= 0.97
    # llama.cpp quantizes activations to Q8_K for TQ matmuls; the embedding is Q8_0: small, bounded error
    assert np.abs(got - ref).max() <= 0.03 * np.abs(ref).max()


def test_group_scaled_ternary_is_refused_naming_the_tensor(tmp_path) -> None:
    # BitCPM-CANN style: one absmean scale per 32 values -> several magnitudes in a 256-block
    src = cached_checkpoint(
        SyntheticSpec(
            hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=2, dim_model_base=64, ternary=True, seed=3
        )
    )
    with pytest.raises(edgecpm.EdgecpmError, match=r"tensor blk\.0\.attn_q\.weight is not ternary"):
        edgecpm.export(src, format="gguf", out=tmp_path / "out", quant="tq2_0", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_normal_weights_are_refused(tmp_path) -> None:
    with pytest.raises(edgecpm.EdgecpmError, match="not ternary"):
        edgecpm.export(cached_checkpoint(WIDE), format="gguf", out=tmp_path / "out", quant="tq1_0", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_rows_not_multiple_of_256_are_refused(tiny_tied, tmp_path) -> None:
    with pytest.raises(edgecpm.EdgecpmError, match=r"tensor blk\.0\.attn_q\.weight has rows of 64 values"):
        edgecpm.export(tiny_tied, format="gguf", out=tmp_path / "out", quant="tq2_0", progress=False)
    assert list(tmp_path.iterdir()) == []
