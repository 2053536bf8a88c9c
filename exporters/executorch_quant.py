"""Quantization of the export module through torchao, as XNNPACK runs it.

`8da4w`: int8 dynamic per-token activations with int4 symmetric group-wise weights
(`Int8DynamicActivationIntxWeightConfig`), the same config ExecuTorch's own Llama export uses (including its
default HQQ scale search). Linears whose input width is not a multiple of the group size stay fp32, exactly as
ExecuTorch's Llama export does; their names are returned so the manifest records them.
`8da8w`: the same with int8 weights, per output channel: XNNPACK has no int8 group-wise kernel (its lowering
asserts "Only 4b group quantization is supported"), so int8 weights are always per channel. Optional 4-bit
group-wise embedding (`IntxWeightOnlyConfig`), which lowers to `quantized_decomposed::embedding_4bit`.
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

        def wanted(m: nn.Module, fqn: str) -> bool:
            if not isinstance(m, nn.Linear):
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
