"""Ternary (BitCPM4) tensors recognised from their values, and the scale granularity they were quantized with.

BitCPM4 checkpoints are published fake-quantized: BF16 matrices whose values are scale x {-1, 0, +1}. Which
scale layout was used is not documented, so it is read from the values: the coarsest of one scale per tensor,
per row, per group of 128 or per group of 32 along the input dimension under which every nonzero magnitude of
a scale group equals that group's largest one (within a relative `rtol`, for BF16 rounding of the products).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from edgecpm.runtime_kernels.ternary import TernaryWeight, pack_ternary, pack_ternary_base3

# coarsest first: the first layout that explains the values is the model's
GRANULARITIES = ("tensor", "row", "group128", "group32")
RTOL = 4e-3  # BF16 keeps 8 mantissa bits: scale products round to within 2^-8 relative


@dataclass(frozen=True)
class TernaryInfo:
    """How one tensor is ternary: its scale layout, the scale count and the fraction of zero codes."""

    granularity: str
    group: int  # values per scale along K (K for per-row and per-tensor)
    num_scales: int
    zero_fraction: float

    def bits_per_weight(self, trits_per_byte: int = 4, scale_bits: int = 32) -> float:
        """Packed size per weight: 8 / trits_per_byte code bits plus the scales' share."""
        return 8 / trits_per_byte + scale_bits / self.group if self.granularity != "tensor" else 8 / trits_per_byte


def _scale_groups(w: torch.Tensor, granularity: str) -> tuple[torch.Tensor, int] | None:
    n, k = w.shape
    if granularity == "tensor":
        return w.reshape(1, -1), k
    if granularity == "row":
        return w, k
    g = int(granularity.removeprefix("group"))
    if k % g:
        return None
    return w.reshape(-1, g), g


def detect_ternary(w: torch.Tensor, rtol: float = RTOL) -> TernaryInfo | None:
    """The coarsest scale layout under which `w` (2-D) is scale x {-1, 0, +1}, or None when it is not ternary."""
    if w.dim() != 2 or w.numel() == 0 or not w.dtype.is_floating_point:
        return None
    a = w.detach().float().abs()
    if not torch.isfinite(a).all() or not (a > 0).any():
        return None
    for granularity in GRANULARITIES:
        grouped = _scale_groups(a, granularity)
        if grouped is None:
            continue
        groups, size = grouped
        top = groups.amax(dim=1, keepdim=True)
        if bool(((groups == 0) | ((groups - top).abs() <= rtol * top)).all()):
            return TernaryInfo(granularity, size, groups.shape[0], float((a == 0).float().mean()))
    return None


def ternary_codes(w: torch.Tensor, info: TernaryInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes `[N, K]` and fp32 scales `[N, K // group]` (per-tensor / per-row scales repeated per row)."""
    n, k = w.shape
    wf = w.detach().float()
    groups, size = _scale_groups(wf, info.granularity)
    scale = groups.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    codes = torch.round(groups / scale).clamp(-1, 1).to(torch.int8).reshape(n, k)
    if info.granularity == "tensor":
        scales = scale.reshape(1, 1).expand(n, 1)
    else:
        scales = scale.reshape(n, k // size)
    return codes, scales.contiguous()


def pack_detected(w: torch.Tensor, info: TernaryInfo, trits_per_byte: int = 4) -> TernaryWeight:
    """The packed form of a detected ternary matrix: 2-bit (4 trits a byte) or 1.6-bit (5 trits a byte)."""
    codes, scales = ternary_codes(w, info)
    group = w.shape[1] if info.granularity in ("tensor", "row") else info.group
    if trits_per_byte == 5:
        return pack_ternary_base3(codes, scales, group)
    return pack_ternary(codes, scales, group)


def scan(source, names: Iterable[str] | None = None) -> dict[str, TernaryInfo]:
    """Ternary 2-D tensors of a weight source (embeddings and norms are checked too: they are usually not)."""
    found: dict[str, TernaryInfo] = {}
    for name in names if names is not None else source.names():
        if len(source.shape(name)) != 2:
            continue
        info = detect_ternary(source.get(name))
        if info is not None:
            found[name] = info
    return found


TERNARY_MODES = {"auto": 4, "2bit": 4, "1.6bit": 5, "off": 0}


def swap_ternary_linears(model: torch.nn.Module, mode: str = "auto") -> dict[str, TernaryInfo]:
    """Replace every linear layer whose weight is ternary by a packed `TernaryLinear` (the ternary kernel).

    `mode`: "auto" / "2bit" (4 codes a byte), "1.6bit" (5 a byte), "off". Returns what was swapped, by module
    name. The packed values are exactly the checkpoint's, so outputs change only by summation order.
    """
    from edgecpm.errors import EdgecpmError
    from edgecpm.runtime_kernels.ternary import TernaryLinear

    if mode not in TERNARY_MODES:
        raise EdgecpmError(f"ternary mode {mode!r}; expected one of {', '.join(TERNARY_MODES)}")
    trits = TERNARY_MODES[mode]
    swapped: dict[str, TernaryInfo] = {}
    if not trits:
        return swapped
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear) or child.bias is not None or not name.startswith("layers"):
                continue
            info = detect_ternary(child.weight)
            if info is None or child.weight.shape[1] % 4:
                continue
            tw = pack_detected(child.weight, info, trits)
            setattr(module, child_name, TernaryLinear(tw))
            swapped[f"{name}.{child_name}"] = info
    return swapped
