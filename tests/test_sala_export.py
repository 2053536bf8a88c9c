"""MiniCPM-SALA (lightning + softmax layers) exported to ExecuTorch, checked by the ExecuTorch runtime against
the reference model: the lightning layers' recurrent state lives in the program (mutable buffers), so a
chunked prefill, token-by-token decode and a fresh prefill all continue correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgecpm
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.registry import run_export
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

SALA = SyntheticSpec(sala_mixers=("minicpm4", "lightning-attn"), num_layers=4, seed=7)


def test_executorch_sala_chunked_prefill_and_decode_match_reference(tmp_path: Path) -> None:
    pytest.importorskip("executorch.runtime")
    src = cached_checkpoint(SALA)
    run_export(src, "executorch", tmp_path / "et", quant="fp32", progress=False, max_seq_len=16, max_context_len=64)
    et, ref = edgecpm.load(tmp_path / "et"), edgecpm.load(src)
    assert et.backend.name == "executorch"
    ids = [int(x) for x in np.random.default_rng(3).integers(3, 600, 40)]
    # 30 prompt tokens = two program calls (16 + 14): the state carries across chunks
    want = ref.backend.prefill(ids[:30])
    assert np.abs(et.backend.prefill(ids[:30]) - want).max() < 1e-3
    worst = max(float(np.abs(et.backend.decode([t]) - ref.backend.decode([t])).max()) for t in ids[30:])
    assert worst < 1e-3
    # chunked prefill == step-by-step decode inside the ExecuTorch program
    et.backend.prefill(ids[:1])
    stepwise = [et.backend.decode([t])[-1] for t in ids[1:30]][-1]
    assert np.abs(stepwise - want).max() < 1e-3
    # a new prefill at position 0 starts from a zero state, whatever ran before
    assert np.abs(et.backend.prefill(ids[:30]) - want).max() < 1e-3
    with pytest.raises(EdgecpmError, match="cannot be rolled back"):
        et.backend.truncate(20)


def test_sala_memory_at_64k_is_the_per_token_cost_of_its_layer_mix() -> None:
    """MiniCPM-SALA (8 softmax + 24 lightning layers): the planned cache at 64K tokens is the 8 softmax layers'
    K/V (plus InfLLM v2 compressed keys, one per kernel_stride 16) and a fixed fp32 state per lightning layer,
    written out here from the published shapes."""
    plan = edgecpm.plan("minicpm-sala", "x86-64-laptop", context=65536, backend="torch", quant="f32")
    t, softmax, lightning, kv_heads, d, heads = 65536, 8, 24, 2, 128, 32
    kv = softmax * 2 * kv_heads * d * 4 * t  # fp32 cache on the torch backend
    compressed = softmax * kv_heads * d * 4 * t // 16
    state = lightning * heads * d * d * 4
    (candidate,) = plan.candidates  # fits or not (9B in fp32 does not fit a laptop), memory is predicted
    assert candidate.prediction.kv_bytes == kv + compressed + state
