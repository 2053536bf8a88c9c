"""The weights an ONNX export actually computes with, as a `WeightSource` for the reference `Model`.

A quantized graph is only checkable if we know exactly which numbers it multiplies by: each linear weight the
export plan stores in int4/int8 is replaced by `dequantize(quantize(W))` (the same `onnx_quant` code the
exporter packs with), fp16-stored tensors by their fp16 rounding. A tied table under an int8/int4 export is
the head's quantized matrix for both lookup and head; under fp16 the head is a separate fp16 matrix (untied
here, as in the graph). Running the reference `Model` on this source and comparing with onnxruntime checks
the graph (the math), independently of quantization error.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from edgecpm.config import ModelConfig
from edgecpm.exporters.onnx_decoder import OnnxOptions
from edgecpm.exporters.onnx_quant import quantize, quantize_ternary
from edgecpm.weights.base import MemorySource

LINEAR_SUFFIXES = (
    "q_proj.weight",
    "k_proj.weight",
    "v_proj.weight",
    "o_proj.weight",
    "o_gate.weight",
    "z_proj.weight",
    "gate_proj.weight",
    "up_proj.weight",
    "down_proj.weight",
)


def effective_weights(config: ModelConfig, source: Any, opts: OnnxOptions) -> tuple[ModelConfig, MemorySource]:
    tensors: dict[str, torch.Tensor] = {}
    emb = "model.embed_tokens.weight"
    for name in source.names():
        w = source.get(name).float()
        if name.endswith(LINEAR_SUFFIXES):
            w = _as_stored(w, opts.linear_bits(False), opts)
        elif name == "lm_head.weight":
            w = _as_stored(w, opts.linear_bits(True), opts)
        elif name == emb:
            head_bits = opts.linear_bits(True)
            if config.tie_word_embeddings and opts.quant != "fp32":
                tensors["lm_head.weight"] = _as_stored(w, head_bits, opts)
            if config.tie_word_embeddings and head_bits is not None:
                w = tensors["lm_head.weight"]  # the lookup reads the head's quantized bytes
            else:
                w = w.to(torch.float16).float() if opts.float_storage == np.float16 else w
        tensors[name] = w
    if "lm_head.weight" in tensors and config.tie_word_embeddings:
        config = replace(config, tie_word_embeddings=False)
    return config, MemorySource(tensors)


def _as_stored(w: torch.Tensor, bits: int | None, opts: OnnxOptions) -> torch.Tensor:
    if bits is None:
        return w.to(torch.float16).float() if opts.float_storage == np.float16 else w
    bq = quantize_ternary(w.numpy()) if bits == 2 else None  # tq2: ternary weights, others at 8 bits
    if bq is None:
        bq = quantize(w.numpy(), 8 if bits == 2 else bits, opts.block_size)
    return torch.from_numpy(bq.dequantize())
