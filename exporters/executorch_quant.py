"""Quantization of the export module through torchao, as XNNPACK runs it.

`8da4w`: int8 dynamic per-token activations with int4 symmetric group-wise weights
(`Int8DynamicActivationIntxWeightConfig`), the same config ExecuTorch's own Llama export uses (including its
default HQQ scale search). Linears whose input width is not a multiple of the group size stay fp32, exactly as
ExecuTorch's Llama export does; their names are returned so the manifest records them.
`8da8w`: the same with int8 weights, per output channel: XNNPACK has no int8 group-wise kernel (its lowering
asserts "Only 4b group quantization is supported"), so int8 weights are always per channel. Optional 4-bit
group-wise embedding (`IntxWeightOnlyConfig`), which lowers to `quantized_decomposed::embedding_4bit`.
BitCPM4 ternary linears under 8da4w get their own scales (codes exactly -1, 0, +1 in the int4 range): the
weights are lossless and only the int8 activation quantization remains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from edgecpm.errors import EdgecpmError

QUANTS = ("fp32", "8da4w", "8da8w")


@dataclass
class QuantReport:
    quant: str
    group_size: int
    quantized: list[str] = field(default_factory=list)
    kept_fp32: list[str] = field(default_factory=list)
    embedding_bits: int | None = None
    hqq: bool = True
    ternary_exact: list[str] = field(default_factory=list)  # 8da4w linears holding their ternary values exactly


def quantize_module(
    module: nn.Module,
    quant: str,
    group_size: int = 32,
    embedding_bits: int | None = None,
    embedding_group_size: int = 32,
    hqq: bool = True,
) -> QuantReport:
    """Quantize `module` in place (no-op for fp32); return what was quantized."""
    if quant not in QUANTS:
        raise EdgecpmError(f"unknown ExecuTorch quant {quant!r}; expected one of {', '.join(QUANTS)}")
    if group_size < 0:
        raise EdgecpmError(f"group size {group_size}; expected 0 (per channel) or a positive integer")
    if embedding_bits not in (None, 4, 8):
        raise EdgecpmError(f"embedding bits {embedding_bits}; expected 4 or 8")
    if quant == "8da8w":
        group_size = 0
    report = QuantReport(quant, group_size, embedding_bits=embedding_bits, hqq=hqq)
    if quant != "fp32":
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
        from torchao.quantization.granularity import PerAxis, PerGroup

        exact = _ternary_qparams(module, group_size) if quant == "8da4w" else {}

        def wanted(m: nn.Module, fqn: str) -> bool:
            if not isinstance(m, nn.Linear) or fqn in exact:
                return False
            ok = group_size == 0 or m.in_features % group_size == 0
            (report.quantized if ok else report.kept_fp32).append(fqn)
            return ok

        config = Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4 if quant == "8da4w" else torch.int8,
            weight_granularity=PerAxis(0) if group_size == 0 else PerGroup(group_size),
            intx_choose_qparams_algorithm="hqq_scale_only" if hqq else "affine",
        )
        quantize_(module, config, filter_fn=wanted)
        if exact:
            _quantize_exact(module, exact, group_size)
            report.quantized.extend(exact)
            report.ternary_exact.extend(exact)
    if embedding_bits is not None:
        from torchao.quantization import IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup

        dim = next(m for m in module.modules() if isinstance(m, nn.Embedding)).embedding_dim
        if dim % embedding_group_size:
            raise EdgecpmError(
                f"embedding width {dim} is not a multiple of the embedding group size {embedding_group_size}"
            )
        quantize_(
            module,
            IntxWeightOnlyConfig(
                weight_dtype=torch.int4 if embedding_bits == 4 else torch.int8,
                granularity=PerGroup(embedding_group_size),
            ),
            filter_fn=lambda m, fqn: isinstance(m, nn.Embedding),
        )
    return report


def _ternary_qparams(module: nn.Module, group_size: int) -> dict[str, torch.Tensor]:
    """Scales `[N, K / group_size]` of the BitCPM4 ternary linears whose scale groups are whole 8da4w groups:
    with scale s and zero point 0 their int4 codes are exactly -1, 0, +1 (no rounding), instead of the HQQ
    search's 15-level fit. Linears with finer scales than the group size keep the generic path."""
    from edgecpm.weights.ternary import detect_ternary, ternary_codes

    out = {}
    for fqn, m in module.named_modules():
        if not isinstance(m, nn.Linear) or group_size <= 0 or m.in_features % group_size:
            continue
        info = detect_ternary(m.weight)
        if info is None or info.group % group_size:
            continue
        _, scales = ternary_codes(m.weight, info)
        out[fqn] = scales.repeat_interleave(m.in_features // group_size // scales.shape[1], dim=1)
    return out


def _quantize_exact(module: nn.Module, scales: dict[str, torch.Tensor], group_size: int) -> None:
    """The same IntxUnpackedToInt8Tensor (int4 codes, int8 dynamic per-token activations) torchao's 8da4w makes,
    with the given scales instead of searched ones."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_api import _int8_dynamic_activation_intx_weight_transform

    config = Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(group_size), intx_choose_qparams_algorithm=None
    )
    for fqn, s in scales.items():
        m = module.get_submodule(fqn)
        zero = torch.zeros(s.shape, dtype=torch.int8)
        _int8_dynamic_activation_intx_weight_transform(
            m, config, custom_scale=s.to(m.weight.dtype), custom_zero_point=zero
        )
