"""GGUF quantization schemes: which ggml type each tensor gets, and how it is produced.

One table (`SCHEMES`) says, per quant name, the type of ordinary weight matrices, the type of the token
embedding / output matrix, the `general.file_type` label, and, for K-quants, the llama.cpp file type that
`llama_model_quantize` turns an F16 intermediate into. Types that `gguf.quants` implements are quantized
here in numpy, a block of rows at a time so memory stays bounded. Ternary (TQ1_0/TQ2_0) weights are checked
first: TQ stores one scale per 256 values, so it is lossless only when each 256-block holds one magnitude.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf.quants import quant_shape_to_byte_shape, quantize

from edgecpm.errors import EdgecpmError

T = GGMLQuantizationType


@dataclass(frozen=True)
class QuantScheme:
    name: str
    matrix: GGMLQuantizationType  # 2-D weights (for K-quants: the F16 intermediate)
    embedding: GGMLQuantizationType  # token_embd.weight / output.weight
    file_type: LlamaFileType
    llama_ftype: str | None = None  # llama_cpp.LLAMA_FTYPE_* name: llama.cpp quantizes the intermediate
    ternary: bool = False


# Embedding/output policy (a documented choice, docs/gguf.md): float schemes keep their type; every numpy
# integer scheme stores the 73k-row embedding/output as Q8_0 (the most faithful type gguf.quants can write;
# llama.cpp itself would use Q6_K, which only its C quantizer produces); K-quants let llama.cpp decide.
SCHEMES: dict[str, QuantScheme] = {
    s.name: s
    for s in (
        QuantScheme("f32", T.F32, T.F32, LlamaFileType.ALL_F32),
        QuantScheme("f16", T.F16, T.F16, LlamaFileType.MOSTLY_F16),
        QuantScheme("bf16", T.BF16, T.BF16, LlamaFileType.MOSTLY_BF16),
        QuantScheme("q8_0", T.Q8_0, T.Q8_0, LlamaFileType.MOSTLY_Q8_0),
        QuantScheme("q4_0", T.Q4_0, T.Q8_0, LlamaFileType.MOSTLY_Q4_0),
        QuantScheme("q4_1", T.Q4_1, T.Q8_0, LlamaFileType.MOSTLY_Q4_1),
        QuantScheme("q5_0", T.Q5_0, T.Q8_0, LlamaFileType.MOSTLY_Q5_0),
        QuantScheme("q5_1", T.Q5_1, T.Q8_0, LlamaFileType.MOSTLY_Q5_1),
        QuantScheme("q4_k_m", T.F16, T.F16, LlamaFileType.MOSTLY_F16, "LLAMA_FTYPE_MOSTLY_Q4_K_M"),
        QuantScheme("q5_k_m", T.F16, T.F16, LlamaFileType.MOSTLY_F16, "LLAMA_FTYPE_MOSTLY_Q5_K_M"),
        QuantScheme("q6_k", T.F16, T.F16, LlamaFileType.MOSTLY_F16, "LLAMA_FTYPE_MOSTLY_Q6_K"),
        QuantScheme("tq1_0", T.TQ1_0, T.Q8_0, LlamaFileType.MOSTLY_TQ1_0, ternary=True),
        QuantScheme("tq2_0", T.TQ2_0, T.Q8_0, LlamaFileType.MOSTLY_TQ2_0, ternary=True),
    )
}
QUANTS: tuple[str, ...] = tuple(SCHEMES)
EMBEDDING_TENSORS = ("token_embd.weight", "output.weight")
# rows quantized per numpy call: bounds the float32 temporaries to ~chunk * row_length * 4 bytes * a few
_CHUNK_ELEMENTS = 1 << 22


def scheme(name: str | None) -> QuantScheme:
    key = (name or "f16").lower()
    if key not in SCHEMES:
        raise EdgecpmError(f"unknown GGUF quant {name!r}; expected one of {', '.join(QUANTS)}")
    return SCHEMES[key]


def tensor_type(s: QuantScheme, gguf_name: str, shape: tuple[int, ...]) -> GGMLQuantizationType:
    """The ggml type of one tensor (numpy shape). 1-D tensors (norms, rope factors) always stay F32."""
    if len(shape) == 1:
        return T.F32
    want = s.embedding if gguf_name in EMBEDDING_TENSORS else s.matrix
    block = GGML_QUANT_SIZES[want][0]
    if shape[-1] % block:
        if s.ternary and gguf_name not in EMBEDDING_TENSORS:
            raise EdgecpmError(
                f"tensor {gguf_name} has rows of {shape[-1]} values; {s.name} needs a multiple of {block}"
            )
        return T.F16  # what the official converter falls back to
    return want


def byte_shape(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> tuple[int, ...]:
    return quant_shape_to_byte_shape(shape, qtype)


def quantize_tensor(
    t: torch.Tensor,
    qtype: GGMLQuantizationType,
    name: str,
    ternary: bool = False,
    regroup: bool = False,
    stats: dict | None = None,
) -> np.ndarray:
    """`t` (any float dtype, 1-D or 2-D) -> uint8 bytes of `qtype`, a block of rows at a time.

    `regroup` (ternary types): a ternary matrix with finer scales than one per 256 values is re-grouped to TQ's
    one scale per block (`regroup_ternary`); `stats[name]` then gets the relative RMS change it made.
    """
    if t.dim() == 1:
        return np.ascontiguousarray(t.float().numpy()).view(np.uint8)
    rows, cols = t.shape
    out = np.empty(byte_shape((rows, cols), qtype), dtype=np.uint8)
    step = max(1, _CHUNK_ELEMENTS // max(cols, 1))
    for r0 in range(0, rows, step):
        chunk = t[r0 : r0 + step].float().numpy()
        if ternary and regroup:
            check_ternary(chunk, name, r0, regroup=True)
            chunk, err, ref = regroup_ternary(chunk)
            if stats is not None:
                e, r = stats.setdefault(name, [0.0, 0.0])
                stats[name] = [e + err, r + ref]
        elif ternary:
            check_ternary(chunk, name, r0)
        q = quantize(chunk, qtype)
        out[r0 : r0 + step] = np.ascontiguousarray(q).view(np.uint8).reshape(len(chunk), -1)
    return out


def regroup_ternary(rows: np.ndarray, block: int = 256) -> tuple[np.ndarray, float, float]:
    """Ternary rows with several scales per 256-value block -> one scale per block, codes kept.

    The block scale is the least-squares one for fixed codes, the mean nonzero magnitude. Returns the new rows,
    the squared change and the squared norm of the input (their ratio is the relative error squared).
    """
    a = rows.reshape(-1, block)
    mag = np.abs(a)
    nonzero = mag > 0
    d = mag.sum(axis=1, keepdims=True) / np.maximum(nonzero.sum(axis=1, keepdims=True), 1)
    out = (np.sign(a) * d).astype(np.float32)
    return out.reshape(rows.shape), float(((out - a) ** 2).sum()), float((a.astype(np.float64) ** 2).sum())


def regroup_error(rows: np.ndarray) -> float:
    """Relative RMS change `regroup_ternary` makes to `rows`."""
    _, err, ref = regroup_ternary(rows)
    return (err / ref) ** 0.5 if ref else 0.0


def check_ternary(rows: np.ndarray, name: str, first_row: int = 0, rtol: float = 1e-3, regroup: bool = False) -> None:
    """Every 256-value block must be d * {-1, 0, +1} for a single d, else TQ would change the weights.

    With `regroup` a ternary tensor with finer scales (per 32 or 128 values, BitCPM-CANN style) passes; the
    refusal otherwise names its granularity and the error re-grouping would make.
    """
    from edgecpm.weights.ternary import detect_ternary

    block = 256
    if rows.shape[-1] % block:
        raise EdgecpmError(
            f"tensor {name} has rows of {rows.shape[-1]} values; ternary types need a multiple of {block}"
        )
    info = detect_ternary(torch.from_numpy(np.ascontiguousarray(rows)))
    if regroup:
        if info is None:
            raise EdgecpmError(
                f"tensor {name} is not ternary (its values are not scale*{{-1,0,+1}} at any "
                "granularity), so re-grouping its scales cannot make it TQ1_0/TQ2_0"
            )
        return
    a = np.abs(rows.reshape(-1, block))
    d = a.max(axis=1, keepdims=True)
    bad = (a > 0) & (np.abs(a - d) > rtol * d)
    if bad.any():
        b = int(np.argmax(bad.any(axis=1)))
        row = first_row + b * block // rows.shape[-1]
        vals = np.unique(a[b][a[b] > 0])
        if info is not None:
            raise EdgecpmError(
                f"tensor {name} is not ternary with one scale per 256 values: its scales are per "
                f"{info.granularity.replace('group', 'group of ')}, finer than TQ1_0/TQ2_0 store; re-grouping "
                f"to one scale per 256 values would change it by {regroup_error(rows):.1%} (relative RMS); pass "
                "--option ternary_regroup=true to export with that error, or use onnx/executorch"
            )
        raise EdgecpmError(
            f"tensor {name} is not ternary: row {row} has a 256-value block with {len(vals)} distinct "
            f"magnitudes (e.g. {vals[0]:.4g} and {vals[-1]:.4g}); TQ1_0/TQ2_0 need values "
            "scale*{-1,0,+1} with one scale per 256 values"
        )


def llamacpp_quantize(src: str, dst: str, ftype_name: str, threads: int | None = None) -> None:
    """Quantize `src` (an F16 GGUF) to `dst` with llama.cpp's own quantizer and per-tensor type policy."""
    try:
        import llama_cpp
    except ImportError:
        raise EdgecpmError("K-quants are produced by llama.cpp's quantizer: pip install llama-cpp-python") from None
    from llama_cpp import _logger
    from llama_cpp._utils import suppress_stdout_stderr

    _logger.set_verbose(False)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = int(threads or 0)
    # its per-tensor "falling back to ..." notes go straight to stderr; the manifest's tensor_types records them
    with suppress_stdout_stderr(disable=False):
        rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise EdgecpmError(f"llama.cpp's quantizer failed ({ftype_name}, return code {rc})")
