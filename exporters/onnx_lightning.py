"""MiniCPM-SALA lightning layers in standard ONNX ops, with the recurrent state as graph state.

Each lightning layer `i` takes `past_key_values.i.recurrent_state [B, H, Dk, Dv]` (zeros at position 0) and
returns `present.i.recurrent_state`, just as softmax layers take and return their K/V cache (plus a
placeholder `conv_state` that ONNX Runtime GenAI requires beside a recurrent state). One call attends
its S new tokens in the chunked form of `runtime_kernels.lightning` (per-head decay g_h = -slope_h):

    out   = scale * ((q kᵀ ⊙ M) v + (q ⊙ e^{g(i+1)}) S_past),   M[i, j] = e^{g(i-j)} for j <= i, else 0
    S_new = e^{gS} S_past + (k ⊙ e^{g(S-1-i)})ᵀ v

so one S-token call equals S one-token calls. Before that: q/k/v projections, per-head RMSNorm on q and k,
plain RoPE (theta from the config, no LongRoPE factors; computed from the positions in the graph, so no table
grows with the context). After: RMSNorm over all heads (`o_norm`), sigmoid gate `z_proj`, `o_proj`. The
intra-call mask is `[1, H, S, S]`, so the backend feeds long prompts in chunks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto

DecoderGraph = Any  # onnx_decoder.DecoderGraph, which imports this module (no import back)

STATE_IN = "past_key_values.{}.recurrent_state"
STATE_OUT = "present.{}.recurrent_state"
# ONNX Runtime GenAI (0.18) pairs every recurrent state with a causal-conv state (its GatedDeltaNet layout);
# lightning layers have no convolution, so a one-value placeholder is passed through unchanged
CONV_IN = "past_key_values.{}.conv_state"
CONV_OUT = "present.{}.conv_state"


def declare_state(dg: DecoderGraph, index: int) -> None:
    """The layer's state input and output, `[batch_size, H, Dk, Dv]`, and the `[batch_size, 1, 1]`
    placeholder conv state GenAI needs (an Identity)."""
    lc, g = dg.cfg.lightning, dg.g
    shape = ["batch_size", lc.num_heads, lc.head_dim, lc.head_dim]
    g.add_input(STATE_IN.format(index), TensorProto.FLOAT, shape)
    g.add_output(STATE_OUT.format(index), TensorProto.FLOAT, shape)
    g.add_input(CONV_IN.format(index), TensorProto.FLOAT, ["batch_size", 1, 1])
    g.add_output(CONV_OUT.format(index), TensorProto.FLOAT, ["batch_size", 1, 1])
    g.op("Identity", [CONV_IN.format(index)], outputs=[CONV_OUT.format(index)], name=f"/layers.{index}/conv_state")


def lightning_attention(dg: DecoderGraph, index: int, spec, p: str, xn: str) -> str:
    """The attention branch of lightning layer `index` (weights under `p`), from its normed input `xn`."""
    from edgecpm.runtime_kernels.lightning import sala_log_decay

    g, cfg, lc = dg.g, dg.cfg, dg.cfg.lightning
    h, hkv, d = lc.num_heads, lc.num_kv_heads, lc.head_dim
    a, n = f"{p}.self_attn", f"/layers.{index}/lightning"
    eps = cfg.rms_norm_eps
    qkv = dg.linear(xn, [f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight"], f"{a}.qkv")
    q, k, v = g.op("Split", [qkv, g.const([h * d, hkv * d, hkv * d])], n_out=3, axis=-1, name=f"{n}/Split")
    q = g.op("Reshape", [q, g.const([0, 0, h, d])], name=f"{n}/q/Reshape")
    k = g.op("Reshape", [k, g.const([0, 0, hkv, d])], name=f"{n}/k/Reshape")
    v = g.op("Reshape", [v, g.const([0, 0, hkv, d])], name=f"{n}/v/Reshape")
    if lc.qk_norm:  # per-head RMSNorm over head_dim
        for tag in ("q", "k"):
            w = dg.norm_weight(f"{a}.{tag}_norm.weight")
            x = q if tag == "q" else k
            x = g.op("SimplifiedLayerNormalization", [x, w], epsilon=eps, axis=-1, stash_type=1, name=f"{n}/{tag}_norm")
            q, k = (x, k) if tag == "q" else (q, x)
    q, k, v = (
        g.op("Transpose", [x], perm=[0, 2, 1, 3], name=f"{n}/{t}/Transpose") for x, t in ((q, "q"), (k, "k"), (v, "v"))
    )
    if hkv != h:  # repeat_interleave over heads: query head j reads kv head j // (h / hkv)
        k, v = _repeat_heads(dg, k, h // hkv, f"{n}/k_rep"), _repeat_heads(dg, v, h // hkv, f"{n}/v_rep")
    if spec.use_rope:
        cos, sin = _plain_rope_rows(dg)
        q, k = dg.rotate(q, cos, sin, f"{n}/q_rope"), dg.rotate(k, cos, sin, f"{n}/k_rope")

    c = _chunk_constants(dg, sala_log_decay(h).numpy())
    past = STATE_IN.format(index)
    kt = g.op("Transpose", [k], perm=[0, 1, 3, 2], name=f"{n}/kT")
    scores = g.op("Mul", [g.op("MatMul", [q, kt], name=f"{n}/qk"), c["mask"]], name=f"{n}/decay_mask")
    intra = g.op("MatMul", [scores, v], name=f"{n}/intra")
    q_decayed = g.op("Mul", [q, c["q_decay"]], name=f"{n}/q_decay")
    inter = g.op("MatMul", [q_decayed, past], name=f"{n}/inter")
    out = g.op(
        "Mul",
        [g.op("Add", [intra, inter], name=f"{n}/sum"), g.const(lc.head_dim**-0.5, np.float32)],
        name=f"{n}/scale",
    )
    k_decayed = g.op("Mul", [k, c["k_decay"]], name=f"{n}/k_decay")
    update = g.op("MatMul", [g.op("Transpose", [k_decayed], perm=[0, 1, 3, 2], name=f"{n}/kdT"), v], name=f"{n}/kv")
    carried = g.op("Mul", [past, c["state_decay"]], name=f"{n}/state_decay")
    g.op("Add", [carried, update], outputs=[STATE_OUT.format(index)], name=f"{n}/state")

    t = g.op("Transpose", [out], perm=[0, 2, 1, 3], name=f"{n}/out/Transpose")
    out = g.op("Reshape", [t, g.const([0, 0, h * d])], name=f"{n}/out/Reshape")
    if lc.output_norm:
        w = dg.norm_weight(f"{a}.o_norm.weight")
        out = g.op("SimplifiedLayerNormalization", [out, w], epsilon=eps, axis=-1, stash_type=1, name=f"{n}/o_norm")
    if lc.output_gate:
        z = dg.linear(xn, [f"{a}.z_proj.weight"], f"{a}.z_proj")
        out = g.op("Mul", [out, g.op("Sigmoid", [z], name=f"{n}/z_sigmoid")], name=f"{n}/z_gate")
    return dg.linear(out, [f"{a}.o_proj.weight"], f"{a}.o_proj")


def _repeat_heads(dg: DecoderGraph, x: str, rep: int, n: str) -> str:
    g, h, d = dg.g, dg.cfg.lightning.num_heads, dg.cfg.lightning.head_dim
    u = g.op("Unsqueeze", [x, g.const([2])], name=f"{n}/Unsqueeze")
    e = g.op("Expand", [u, g.const([1, 1, rep, 1, 1])], name=f"{n}/Expand")
    return g.op("Reshape", [e, g.const([0, h, -1, d])], name=f"{n}/Reshape")


def _positions(dg: DecoderGraph, n: str) -> tuple[str, str, str]:
    """(first new position, total length, new-token count) as int64 scalars, from the mask and ids shapes."""
    g = dg.g
    total = g.op(
        "Gather", [g.op("Shape", ["attention_mask"], name=f"{n}/mask_shape"), g.const(1)], axis=0, name=f"{n}/total"
    )
    seq = g.op("Gather", [g.op("Shape", ["input_ids"], name=f"{n}/ids_shape"), g.const(1)], axis=0, name=f"{n}/seq")
    start = g.op("Sub", [total, seq], name=f"{n}/start")
    return start, total, seq


def _plain_rope_rows(dg: DecoderGraph) -> tuple[str, str]:
    """cos/sin `[1,1,S,D]` of plain RoPE at the new positions (computed once per graph)."""
    cached = getattr(dg, "_lightning_rope", None)
    if cached is not None:
        return cached
    g, d = dg.g, dg.cfg.lightning.head_dim
    n = "/lightning_rope"
    start, total, _ = _positions(dg, n)
    denom = (dg.cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d)).astype(np.float32)
    inv_freq = (np.float32(1.0) / denom).astype(np.float32)
    pos = g.op(
        "Cast", [g.op("Range", [start, total, g.const(1)], name=f"{n}/Range")], to=TensorProto.FLOAT, name=f"{n}/pos"
    )
    freqs = g.op(
        "Mul",
        [
            g.op("Unsqueeze", [pos, g.const([1])], name=f"{n}/pos_col"),
            g.const(inv_freq[None, :], np.float32, name="lightning_inv_freq"),
        ],
        name=f"{n}/freqs",
    )
    emb = g.op("Concat", [freqs, freqs], axis=-1, name=f"{n}/emb")
    rows = []
    for fn in ("Cos", "Sin"):
        r = g.op(fn, [emb], name=f"{n}/{fn}")
        rows.append(g.op("Unsqueeze", [r, g.const([0, 1])], name=f"{n}/{fn}/Unsqueeze"))
    dg._lightning_rope = (rows[0], rows[1])
    return dg._lightning_rope


def _chunk_constants(dg: DecoderGraph, log_decay: np.ndarray) -> dict[str, str]:
    """The decay factors of one S-token call, shared by every lightning layer (the decay is per head only)."""
    cached = getattr(dg, "_lightning_chunk", None)
    if cached is not None:
        return cached
    g = dg.g
    n = "/lightning_chunk"
    _, _, seq = _positions(dg, n)
    gh = g.const(log_decay.astype(np.float32).reshape(1, -1, 1), np.float32, name="lightning_log_decay")  # [1,H,1]
    i = g.op(
        "Cast", [g.op("Range", [g.const(0), seq, g.const(1)], name=f"{n}/Range")], to=TensorProto.FLOAT, name=f"{n}/i"
    )
    s = g.op("Cast", [seq], to=TensorProto.FLOAT, name=f"{n}/S")
    diff = g.op(
        "Sub",
        [
            g.op("Unsqueeze", [i, g.const([1])], name=f"{n}/i_col"),
            g.op("Unsqueeze", [i, g.const([0])], name=f"{n}/i_row"),
        ],
        name=f"{n}/diff",
    )  # [S, S]: i - j
    g4 = g.op("Unsqueeze", [gh, g.const([3])], name=f"{n}/g4")  # [1,H,1,1]
    decay = g.op("Exp", [g.op("Mul", [g4, g.op("Relu", [diff], name=f"{n}/relu")], name=f"{n}/gdiff")], name=f"{n}/exp")
    causal = g.op(
        "Cast",
        [g.op("GreaterOrEqual", [diff, g.const(0.0, np.float32)], name=f"{n}/ge")],
        to=TensorProto.FLOAT,
        name=f"{n}/causal",
    )
    mask = g.op("Mul", [decay, causal], name=f"{n}/mask")  # [1,H,S,S]

    def per_token(x: str, tag: str) -> str:  # e^{g x} as [1,H,S,1]
        e = g.op("Exp", [g.op("Mul", [gh, x], name=f"{n}/{tag}/mul")], name=f"{n}/{tag}/exp")
        return g.op("Unsqueeze", [e, g.const([3])], name=f"{n}/{tag}/col")

    one = g.const(1.0, np.float32)
    q_decay = per_token(g.op("Add", [i, one], name=f"{n}/i_plus_1"), "q")
    k_decay = per_token(g.op("Sub", [g.op("Sub", [s, one], name=f"{n}/S_minus_1"), i], name=f"{n}/to_end"), "k")
    state_decay = g.op("Exp", [g.op("Mul", [g4, s], name=f"{n}/gS")], name=f"{n}/state_exp")  # [1,H,1,1]
    dg._lightning_chunk = {"mask": mask, "q_decay": q_decay, "k_decay": k_decay, "state_decay": state_decay}
    return dg._lightning_chunk
