"""Block-wise symmetric weight quantization in the `com.microsoft::MatMulNBits` layout.

A linear weight W `[N, K]` (out, in) is cut along K into blocks of `block_size`; each block gets one fp32
scale
`d = m / -(2^(bits-1))` where m is the block's value of largest magnitude (sign kept), so that value lands
exactly on the most negative code and the full code range is used (the same rule as llama.cpp's q4_0/q8_0).
Codes are stored offset by 2^(bits-1) (so no zero_points input is needed: MatMulNBits' default zero point is
exactly that offset). For 4 bits, element 2i of a block goes to the low nibble of byte i and 2i+1 to the high.
K need not be a multiple of the block size: the last block is zero-padded (SmolLM2's hidden size 576 with
block 128, for example), which MatMulNBits expects (`B` is `[N, ceil(K/block), block*bits/8]`).
Ternary (BitCPM4) weights are packed at 2 bits with their own codes and scales (`quantize_ternary`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecpm.errors import EdgecpmError

VALID_BITS = (4, 8)


@dataclass
class BlockQuantized:
    packed: np.ndarray  # uint8 [N, k_blocks, block_size * bits / 8]
    scales: np.ndarray  # float32 [N, k_blocks]
    bits: int
    block_size: int
    k: int

    def dequantize(self) -> np.ndarray:
        """The float32 `[N, K]` weight that MatMulNBits computes with (for reference checks)."""
        return dequantize(self)


def check_block_size(block_size: int) -> None:
    if block_size < 16 or block_size & (block_size - 1):
        raise EdgecpmError(f"group size {block_size} is invalid; MatMulNBits needs a power of two >= 16")


def quantize(weight: np.ndarray, bits: int, block_size: int, chunk_elements: int = 1 << 22) -> BlockQuantized:
    """Quantize `[N, K]` a few rows at a time (float32 temporaries stay ~chunk_elements * 4 bytes each)."""
    if bits not in VALID_BITS:
        raise EdgecpmError(f"{bits}-bit weights are not supported; expected one of {VALID_BITS}")
    check_block_size(block_size)
    n, k = weight.shape
    kb = -(-k // block_size)
    packed = np.empty((n, kb, block_size * bits // 8), dtype=np.uint8)
    scales = np.empty((n, kb), dtype=np.float32)
    step = max(1, chunk_elements // max(k, 1))
    for r0 in range(0, n, step):
        packed[r0 : r0 + step], scales[r0 : r0 + step] = _quantize_rows(weight[r0 : r0 + step], bits, block_size)
    return BlockQuantized(packed, scales, bits, block_size, k)


def _quantize_rows(rows: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(rows, dtype=np.float32)
    n, k = w.shape
    kb = -(-k // block_size)
    if kb * block_size != k:
        w = np.pad(w, ((0, 0), (0, kb * block_size - k)))
    blocks = w.reshape(n, kb, block_size)
    half = 1 << (bits - 1)
    idx = np.abs(blocks).argmax(axis=-1)[..., None]
    extreme = np.take_along_axis(blocks, idx, axis=-1)[..., 0]
    scale = (extreme / -half).astype(np.float32)
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
    q = (np.clip(np.rint(blocks * inv[..., None]), -half, half - 1) + half).astype(np.uint8)
    if bits == 4:
        return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8), scale
    return q, scale


TERNARY_BLOCK = 128  # MatMulNBits block for per-row / per-tensor ternary scales (2.25 bits per weight)


def quantize_ternary(weight: np.ndarray) -> BlockQuantized | None:
    """BitCPM4 ternary `[N, K]` as 2-bit MatMulNBits with the checkpoint's own codes and scales (lossless), or
    None when the weight is not ternary. Per-32 / per-128 scales become blocks of that size; per-row and
    per-tensor scales are repeated over blocks of `TERNARY_BLOCK`. Codes are stored +2 (MatMulNBits' default
    2-bit zero point), element 4i+j of a block in bits 2j..2j+1 of byte i."""
    import torch

    from edgecpm.weights.ternary import detect_ternary, ternary_codes

    w = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
    info = detect_ternary(w)
    if info is None:
        return None
    codes, scales = ternary_codes(w, info)
    n, k = w.shape
    block = info.group if info.granularity.startswith("group") else TERNARY_BLOCK
    kb = -(-k // block)
    scales = scales.numpy()
    scales = scales if scales.shape[1] == kb else np.repeat(scales[:, :1], kb, axis=1)
    q = np.zeros((n, kb * block), dtype=np.uint8)
    q[:, :k] = (codes.numpy() + 2).astype(np.uint8)
    q[:, k:] = 2  # padding decodes to 0
    q = q.reshape(n, kb, block)
    packed = q[..., 0::4] | (q[..., 1::4] << 2) | (q[..., 2::4] << 4) | (q[..., 3::4] << 6)
    return BlockQuantized(packed.astype(np.uint8), scales.astype(np.float32), 2, block, k)


def dequantize(bq: BlockQuantized) -> np.ndarray:
    half = 1 << (bq.bits - 1)
    if bq.bits == 2:
        q = np.empty(bq.packed.shape[:-1] + (bq.packed.shape[-1] * 4,), dtype=np.int16)
        for j in range(4):
            q[..., j::4] = (bq.packed >> (2 * j)) & 0x03
    elif bq.bits == 4:
        q = np.empty(bq.packed.shape[:-1] + (bq.packed.shape[-1] * 2,), dtype=np.int16)
        q[..., 0::2] = bq.packed & 0x0F
        q[..., 1::2] = bq.packed >> 4
    else:
        q = bq.packed.astype(np.int16)
    w = (q - half).astype(np.float32) * bq.scales[..., None]
    return w.reshape(w.shape[0], -1)[:, : bq.k]
