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
