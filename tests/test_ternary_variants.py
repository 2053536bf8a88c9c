"""BitCPM4 ternary models: scale granularity read from the values, 2-bit and 1.6-bit packing, the packed kernel
swapped in at load, and `edgecpm inspect` listing the ternary tensors."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import edgecpm
from edgecpm.runtime_kernels.ternary import TernaryLinear, dequantize_ternary, pack_ternary_base3
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
from edgecpm.weights.ternary import detect_ternary, pack_detected
from tests import float64_reference as f64

TERNARY = SyntheticSpec(ternary=True, seed=4)  # BitCPM-CANN style: absmean scale per 32 values, stored bf16


def _fake_quantized(rows: int, cols: int, scale_shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """scale x {-1, 0, +1} in BF16 with one scale per block of the given (rows, cols) shape."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (rows, cols), generator=g).float()
    scales = torch.rand(rows // scale_shape[0], cols // scale_shape[1], generator=g) + 0.1
    full = scales.repeat_interleave(scale_shape[0], 0).repeat_interleave(scale_shape[1], 1)
    return (codes * full).to(torch.bfloat16)


@pytest.mark.parametrize(
    "block, granularity, group",
    [
        ((256, 512), "tensor", 512),
        ((1, 512), "row", 512),
        ((1, 128), "group128", 128),
        ((1, 32), "group32", 32),
    ],
)
def test_scale_granularity_is_read_from_the_values(block, granularity, group) -> None:
    w = _fake_quantized(256, 512, block)
    info = detect_ternary(w)
    assert info is not None and (info.granularity, info.group) == (granularity, group)
    packed = pack_detected(w, info)
    assert torch.equal(dequantize_ternary(packed), w.float())  # BF16 products are exact in fp32
    assert torch.equal(dequantize_ternary(pack_detected(w, info, trits_per_byte=5)), w.float())


def test_non_ternary_weights_are_not_detected() -> None:
    assert detect_ternary(torch.randn(64, 128)) is None
    w = _fake_quantized(64, 128, (1, 32)).float()
    w[3, 5] *= 1.5  # one value off its group's scale
    assert detect_ternary(w) is None


def test_base3_packing_holds_every_five_trit_pattern_in_one_byte() -> None:
    codes = torch.tensor(list(itertools.product((-1, 0, 1), repeat=5)), dtype=torch.int8).reshape(1, -1)  # 243*5
    codes = torch.nn.functional.pad(codes, (0, 1280 - codes.shape[1]))
    tw = pack_ternary_base3(codes, torch.ones(1, 1280 // 32), 32)
    assert tw.packed.shape == (1, 256) and tw.bits_per_weight() == pytest.approx(1.6 + 32 / 32)
    # independent decode: q = ceil(v * 256 / 243) -> v = floor(q * 243 / 256), then base-3 digits (first = most
    # significant)
    q = tw.packed.numpy().astype(np.int64)[0]
    v = (q * 243) >> 8
    digits = np.stack([(v // 3 ** (4 - i)) % 3 for i in range(5)], axis=1).reshape(-1) - 1
    assert np.array_equal(digits, codes.numpy()[0])
    assert torch.equal(dequantize_ternary(tw), codes.float())


@pytest.mark.parametrize("mode", ["auto", "1.6bit"])
def test_load_swaps_in_the_packed_kernel_and_matches_float64(mode: str) -> None:
    ckpt = cached_checkpoint(TERNARY)
    lm = edgecpm.load(ckpt, ternary=mode)
    swapped = lm.backend.model.ternary_layers
    assert len(swapped) == 7 * TERNARY.num_layers and {i.granularity for i in swapped.values()} == {"group32"}
    assert isinstance(lm.backend.model.layers["0"].self_attn.q_proj, TernaryLinear)
    assert lm.backend.model.layers["0"].mlp.down_proj.trits_per_byte == (5 if mode == "1.6bit" else 4)
    ids = [int(x) for x in np.random.default_rng(2).integers(3, 600, 20)]
    cfg, w = f64.load_checkpoint(ckpt)
    want = f64.forward(cfg, w, ids)
    assert np.abs(lm.logits(ids) - want).max() < 1e-3 * max(1.0, np.abs(want).max())
    plain = edgecpm.load(ckpt, ternary="off")
    assert not plain.backend.model.ternary_layers
    assert isinstance(plain.backend.model.layers["0"].self_attn.q_proj, torch.nn.Linear)


def test_inspect_lists_ternary_tensors_and_bits_per_weight() -> None:
    ckpt = cached_checkpoint(TERNARY)
    out = subprocess.run(
        [sys.executable, "-m", "edgecpm", "inspect", str(ckpt), "--json"], capture_output=True, text=True, check=True
    ).stdout
    t = json.loads(out)["ternary"]
    assert t["tensors"] == 7 * TERNARY.num_layers and t["granularity"] == {"group32": 14}
    assert t["bits_per_weight_2bit"] == pytest.approx(2 + 32 / 32)  # 2-bit codes + one fp32 scale per 32
    assert t["bits_per_weight_1.6bit"] == pytest.approx(1.6 + 1)
    assert "model.layers.0.mlp.gate_proj.weight" in t["names"] and "model.embed_tokens.weight" not in t["names"]
    plain = json.loads(
        subprocess.run(
            [sys.executable, "-m", "edgecpm", "inspect", str(cached_checkpoint(SyntheticSpec())), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert "ternary" not in plain


# 256-wide so every row is whole TQ blocks; BitCPM-CANN per-32 absmean scales (finer than TQ's one per 256)
GROUP32_WIDE = SyntheticSpec(
    hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=2, dim_model_base=64, ternary=True, seed=3
)


def _regrouped(w: np.ndarray) -> np.ndarray:
    """Independent re-grouping: per 256-value block, sign(w) times the block's mean nonzero magnitude."""
    b = w.reshape(-1, 256).astype(np.float64)
    mag = np.abs(b)
    d = np.array([m[m > 0].mean() if (m > 0).any() else 0.0 for m in mag])[:, None]
    return (np.sign(b) * d).reshape(w.shape)


def test_gguf_tq_refuses_finer_scales_with_the_error_it_would_make(tmp_path) -> None:
    with pytest.raises(edgecpm.EdgecpmError, match=r"per group of 32.*would change it by \d+\.\d%.*ternary_regroup"):
        edgecpm.export(
            cached_checkpoint(GROUP32_WIDE), format="gguf", out=tmp_path / "x", quant="tq2_0", progress=False
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("quant", ["tq1_0", "tq2_0"])
def test_gguf_tq_regrouped_is_smaller_than_q4_0_states_its_error_and_runs_in_llamacpp(quant, tmp_path) -> None:
    pytest.importorskip("llama_cpp")
    from edgecpm.weights import open_checkpoint
    from tests.gguf_common import llamacpp_logits, text_ids

    src = cached_checkpoint(GROUP32_WIDE)
    art = edgecpm.export(src, format="gguf", out=tmp_path / quant, quant=quant, progress=False, ternary_regroup=True)
    q4 = edgecpm.export(src, format="gguf", out=tmp_path / "q4", quant="q4_0", progress=False)
    assert art.model_file.stat().st_size < q4.model_file.stat().st_size
    _, source = open_checkpoint(src)
    _, back = open_checkpoint(art.model_file)  # gguf-py's own TQ dequantizer
    name = "model.layers.0.self_attn.q_proj.weight"
    w = source.get(name).float().numpy()
    want = _regrouped(w)
    np.testing.assert_allclose(back.get(name).numpy(), want, rtol=1e-3, atol=1e-6)  # fp16 block scales
    stated = art.manifest.extra["ternary_regroup_error"]
    err = np.sqrt(((want - w) ** 2).sum() / (w.astype(np.float64) ** 2).sum())
    assert stated["per_tensor"]["blk.0.attn_q.weight"] == pytest.approx(err, rel=1e-3)
    assert stated["max"] >= err
    # llama.cpp runs it; against the reference model on the file's own (re-grouped) weights
    ids = text_ids(src, 64)
    ref = edgecpm.load(art.model_file, backend="torch").logits(ids)
    got = llamacpp_logits(art.model_file, ids)
    assert np.abs(got - ref).max() <= 0.03 * np.abs(ref).max()  # Q8_K activations in TQ matmuls
