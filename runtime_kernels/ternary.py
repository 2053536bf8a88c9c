"""Ternary (BitCPM) weights packed 2 bits per value with per-group scales, and the matmul that unpacks them.

Packing: weight `[N, K]` = scale[n, k // group] * t[n, k] with t in {-1, 0, +1}. Codes `t + 1` (0, 1, 2) are
stored four per byte along K, value k in bits `2 * (k % 4)` of byte `k // 4`: `packed` is uint8 `[N, K / 4]`,
`scales` fp32 `[N, K / group]`. The 1.6-bit form (TQ1-style) stores five codes per byte in base 3: byte
`ceil(v * 256 / 243)` for `v = sum_i c_i * 3^(4-i)` over codes `c_0..c_4` of values 5j..5j+4 (the first is the
most significant trit), so trit i decodes with one multiply and shift as `((q * 3^i) mod 256) * 3 >> 8`;
`packed` is then `[N, ceil(K / 5)]`. BitCPM4 checkpoints hold these values fake-quantized in BF16 (scale times
{-1, 0, 1}); `quantize_ternary` recovers the codes with the BitCPM-CANN absmean rule, which is exact on such
weights. The reference dequantizes the whole matrix; the vectorized path unpacks one tile of output rows at a
time (so the full-precision matrix never exists) and the Triton kernel unpacks inside the K loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgecpm.errors import EdgecpmError
from edgecpm.runtime_kernels import registry

ROW_TILE = 256


@dataclass
class TernaryWeight:
    packed: torch.Tensor  # uint8 [N, K // 4], or [N, ceil(K / 5)] with trits_per_byte = 5
    scales: torch.Tensor  # fp32 [N, K // group]
    group: int
    trits_per_byte: int = 4
    k: int = 0  # input width (needed for the base-3 form, whose last byte may be padded)

    @property
    def shape(self) -> tuple[int, int]:
        return self.packed.shape[0], self.k or self.packed.shape[1] * 4

    def bits_per_weight(self) -> float:
        return self.nbytes() * 8 / (self.shape[0] * self.shape[1])

    def nbytes(self) -> int:
        return self.packed.numel() + self.scales.numel() * self.scales.element_size()


def _check(k: int, group: int) -> None:
    if group <= 0 or group % 4 or k % group:
        raise EdgecpmError(
            f"ternary packing needs a group size that is a multiple of 4 and divides the input "
            f"width; got group {group} for width {k}"
        )


def pack_ternary(codes: torch.Tensor, scales: torch.Tensor, group: int) -> TernaryWeight:
    """codes int `[N, K]` in {-1, 0, 1}, scales `[N, K // group]` -> packed weight."""
    n, k = codes.shape
    _check(k, group)
    if codes.min() < -1 or codes.max() > 1:
        raise EdgecpmError("ternary codes must be -1, 0 or +1")
    c = (codes.to(torch.int16) + 1).view(n, k // 4, 4)
    packed = c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)
    return TernaryWeight(packed.to(torch.uint8), scales.float().reshape(n, k // group).contiguous(), group)


def pack_ternary_base3(codes: torch.Tensor, scales: torch.Tensor, group: int) -> TernaryWeight:
    """codes `[N, K]` in {-1, 0, 1} -> five codes per byte (1.6 bits per weight), TQ1_0's trit encoding."""
    n, k = codes.shape
    _check(k, group)
    if codes.min() < -1 or codes.max() > 1:
        raise EdgecpmError("ternary codes must be -1, 0 or +1")
    pad = (-k) % 5
    digits = torch.nn.functional.pad(codes.to(torch.int32) + 1, (0, pad), value=1).view(n, -1, 5)
    v = (digits * torch.tensor([81, 27, 9, 3, 1], dtype=torch.int32)).sum(-1)
    q = (v * 256 + 242) // 243  # ceil(v * 256 / 243), at most 255
    return TernaryWeight(q.to(torch.uint8), scales.float().reshape(n, k // group).contiguous(), group, 5, k)


def unpack_codes_base3(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 `[N, ceil(K / 5)]` base-3 bytes -> int8 codes `[N, K]`."""
    q = packed.to(torch.int32)
    trits = [(((q * p) & 255) * 3) >> 8 for p in (1, 3, 9, 27, 81)]
    return (torch.stack(trits, dim=-1).reshape(packed.shape[0], -1)[:, :k] - 1).to(torch.int8)


def weight_codes(tw: TernaryWeight, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """int8 codes of output rows start:stop, whichever packing `tw` uses."""
    rows = tw.packed[start:stop]
    return unpack_codes_base3(rows, tw.shape[1]) if tw.trits_per_byte == 5 else unpack_codes(rows)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """uint8 `[N, K / 4]` -> int8 codes `[N, K]` in {-1, 0, 1}."""
    p = packed.to(torch.int16)
    parts = [(p >> shift) & 3 for shift in (0, 2, 4, 6)]
    return (torch.stack(parts, dim=-1).reshape(packed.shape[0], -1) - 1).to(torch.int8)


def dequantize_ternary(tw: TernaryWeight) -> torch.Tensor:
    """The fp32 matrix `[N, K]` the packed weight stands for."""
    codes = weight_codes(tw).float()
    return codes * tw.scales.repeat_interleave(tw.group, dim=1)


def quantize_ternary(w: torch.Tensor, group: int = 32) -> TernaryWeight:
    """BitCPM-CANN absmean rule: s = max(mean|W_g|, eps), t = clamp(round(W / s), -1, 1).

    On fake-quantized BitCPM weights (scale * {-1, 0, 1}) the absmean differs from the scale, so the scale is
    then refit as the mean magnitude of the nonzero entries, which makes the round trip exact.
    """
    n, k = w.shape
    _check(k, group)
    wg = w.float().reshape(n, k // group, group)
    s = wg.abs().mean(-1, keepdim=True).clamp(min=1e-8)
    codes = (wg / s).round().clamp(-1, 1)
    nonzero = codes.abs().sum(-1, keepdim=True)
    refit = (wg.abs() * codes.abs()).sum(-1, keepdim=True) / nonzero.clamp(min=1)
    scales = torch.where(nonzero > 0, refit, s)
    return pack_ternary(codes.reshape(n, k).to(torch.int8), scales.reshape(n, k // group), group)


def is_ternary(w: torch.Tensor, group: int = 32, rtol: float = 1e-2) -> bool:
    """True when every group holds at most the values {-s, 0, +s} (a fake-quantized BitCPM matrix)."""
    n, k = w.shape
    if group <= 0 or k % group:
        return False
    wg = w.float().reshape(n, k // group, group).abs()
    top = wg.amax(-1, keepdim=True)
    return bool(((wg == 0) | ((wg - top).abs() <= rtol * top)).all())


def ternary_matmul_reference(x: torch.Tensor, tw: TernaryWeight) -> torch.Tensor:
    """x `[..., K]` @ dequantized Wᵀ -> `[..., N]` (fp32)."""
    return x.float() @ dequantize_ternary(tw).to(x.device).T


def ternary_matmul_vectorized(x: torch.Tensor, tw: TernaryWeight, row_tile: int = ROW_TILE) -> torch.Tensor:
    """Unpack `row_tile` output rows at a time and multiply, so only one tile is ever in full precision."""
    n, k = tw.shape
    xf = x.float().reshape(-1, k)
    out = torch.empty(xf.shape[0], n, device=x.device)
    for start in range(0, n, row_tile):
        stop = min(n, start + row_tile)
        codes = weight_codes(tw, start, stop).float()
        w = codes * tw.scales[start:stop].repeat_interleave(tw.group, dim=1)
        out[:, start:stop] = xf @ w.T
    return out.reshape(*x.shape[:-1], n)


def ternary_matmul(x: torch.Tensor, tw: TernaryWeight, *, impl: str | None = None) -> torch.Tensor:
    """x `[..., K]` times the packed ternary weight `[N, K]` transposed -> `[..., N]` fp32."""
    if x.shape[-1] != tw.shape[1]:
        raise EdgecpmError(f"ternary_matmul: input width {x.shape[-1]} does not match the weight's {tw.shape[1]}")
    name = registry.resolve("ternary", x.device, impl)
    if name == "reference":
        return ternary_matmul_reference(x, tw)
    if name == "triton" and tw.trits_per_byte == 4:
        from edgecpm.runtime_kernels.ternary_triton import ternary_matmul_triton

        return ternary_matmul_triton(x, tw)
    return ternary_matmul_vectorized(x, tw)


class TernaryLinear(nn.Module):
    """A bias-free linear layer whose weight is stored packed: 2 (or 1.6) bits per weight plus one fp32 scale
    per group (3 bits per weight at g=32 and 2.25 at g=128 in the 2-bit form, against 16 for BF16)."""

    def __init__(self, tw: TernaryWeight, impl: str | None = None) -> None:
        super().__init__()
        self.register_buffer("packed", tw.packed)
        self.register_buffer("scales", tw.scales)
        self.group = tw.group
        self.trits_per_byte, self.k = tw.trits_per_byte, tw.shape[1]
        self.impl = impl

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int = 32, impl: str | None = None) -> TernaryLinear:
        return cls(quantize_ternary(linear.weight.detach(), group), impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tw = TernaryWeight(self.packed, self.scales, self.group, self.trits_per_byte, self.k)
        return ternary_matmul(x, tw, impl=self.impl).to(x.dtype)
