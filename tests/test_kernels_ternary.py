"""Ternary matmul: packed 2-bit weights times activations equals the matmul with the dequantized weight."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from edgecpm.errors import EdgecpmError  # noqa: E402
from edgecpm.runtime_kernels.ternary import (  # noqa: E402
    TernaryLinear,
    dequantize_ternary,
    is_ternary,
    pack_ternary,
    quantize_ternary,
    ternary_matmul,
    unpack_codes,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("one_thread")


def _bitcpm_weight(n: int, k: int, group: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fake-quantized BitCPM matrix built independently of the packer: codes and scales drawn directly."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (n, k), generator=gen).to(torch.int8)
    scales = torch.rand(n, k // group, generator=gen) + 0.05
    w = codes.float() * scales.repeat_interleave(group, dim=1)
    return w, codes, scales


def test_pack_round_trip_and_size() -> None:
    w, codes, scales = _bitcpm_weight(70, 128)
    tw = pack_ternary(codes, scales, 32)
    assert tw.packed.dtype == torch.uint8 and tw.packed.shape == (70, 32)
    assert torch.equal(unpack_codes(tw.packed), codes)
    assert torch.equal(dequantize_ternary(tw), w)
    assert tw.nbytes() * 8 / w.numel() == pytest.approx(3.0)  # 2 bits + fp32 scale per 32


def test_quantize_recovers_fake_quantized_weights() -> None:
    w, codes, _ = _bitcpm_weight(64, 96, seed=1)
    tw = quantize_ternary(w.to(torch.bfloat16).float(), 32)
    assert torch.equal(unpack_codes(tw.packed), codes)
    assert (dequantize_ternary(tw) - w).abs().max() < 1e-2 * w.abs().max()
    assert is_ternary(w) and not is_ternary(torch.randn(64, 96))


@pytest.mark.parametrize("impl", ["reference", "vectorized", "triton"])
@pytest.mark.parametrize("m", [1, 5, 33])
def test_matmul_equals_dequantized(impl: str, m: int) -> None:
    w, codes, scales = _bitcpm_weight(150, 192, seed=m)
    x = torch.randn(m, 192, generator=torch.Generator().manual_seed(9))
    expected = x @ w.T
    tw = pack_ternary(codes, scales, 32)
    if DEVICE == "cuda":
        tw.packed, tw.scales = tw.packed.cuda(), tw.scales.cuda()
    out = ternary_matmul(x.to(DEVICE), tw, impl=impl).cpu()
    assert out.shape == (m, 150)
    assert (out - expected).abs().max().item() < 1e-4


def test_ternary_linear_module() -> None:
    w, _, _ = _bitcpm_weight(48, 64, seed=2)
    lin = torch.nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    tl = TernaryLinear.from_linear(lin, impl="vectorized")
    x = torch.randn(2, 3, 64)
    assert (tl(x) - lin(x)).abs().max().item() < 1e-4


def test_bad_group_raises() -> None:
    with pytest.raises(EdgecpmError, match="group"):
        quantize_ternary(torch.randn(4, 30), 32)
    w, codes, scales = _bitcpm_weight(4, 64)
    with pytest.raises(EdgecpmError, match="width"):
        ternary_matmul(torch.randn(2, 32), pack_ternary(codes, scales, 32))


def test_custom_op_matches() -> None:
    w, codes, scales = _bitcpm_weight(40, 64, seed=4)
    tw = pack_ternary(codes, scales, 32)
    x = torch.randn(3, 64)
    out = torch.ops.edgecpm.ternary_matmul(x, tw.packed, tw.scales, 32)
    assert (out - x @ w.T).abs().max().item() < 1e-4
