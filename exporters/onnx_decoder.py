"""The MiniCPM4 decoder as an ONNX graph with ONNX Runtime GenAI's I/O names.

Inputs `input_ids [B,S]`, `attention_mask [B,P+S]`, `past_key_values.N.key/value [B,Hkv,P,D]`; outputs
`logits [B,S,V]` and `present.N.key/value [B,Hkv,P+S,D]`. The math is the reference `Model`'s:

    h = Embed(ids) * scale_emb
    h += Attn(RMSNorm(h)) * residual_scale;  h += MLP(RMSNorm(h)) * residual_scale
    logits = lm_head(RMSNorm(h) / logit_scale)      (the divisor is folded into the final norm weight)

Dense layers use `com.microsoft::GroupQueryAttention` with rotary fused in (cos/sin caches are the reference
`RotaryEmbedding`'s LongRoPE values; GQA needs head_dim % 16 == 0, other models use standard-op attention);
residual adds are fused into `SkipSimplifiedLayerNormalization`. InfLLM v2 layers apply rotary and grow the
cache with standard ops and call the custom `ai.edgecpm::InfLLMv2Attention` node (see `onnx_infllmv2.py`) on
their compressed keys, kept as `past_key_values.N.compressed_keys` state (`onnx_infllmv2_state.py`).
Linear weights are fp32, fp16 (stored half, computed fp32) or block-quantized `MatMulNBits` (int8 / int4);
`OnnxOptions.linear_bits` says which, and the reference checks (`onnx_reference.py`) use the same rule.
MiniCPM-SALA lightning layers have no K/V cache: their recurrent state is a graph input/output pair
(`onnx_lightning.py`); the softmax layers keep `past_key_values.N.key/value` under their own layer index N.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from edgecpm.config import ModelConfig
from edgecpm.exporters.onnx_graph import GraphBuilder
from edgecpm.exporters.onnx_infllmv2_state import declare_state as declare_compressed_keys
from edgecpm.exporters.onnx_infllmv2_state import state_names, update_state
from edgecpm.exporters.onnx_lightning import declare_state, lightning_attention
from edgecpm.exporters.onnx_quant import quantize, quantize_ternary

MS = "com.microsoft"
SPARSE_DOMAIN = "ai.edgecpm"
SPARSE_OP = "InfLLMv2Attention"
QUANT_BITS = {"fp32": None, "fp16": None, "int8": 8, "int4": 4, "tq2": 2}  # tq2: ternary weights at 2 bits


@dataclass(frozen=True)
class OnnxOptions:
    """Export knobs. `block_size` is the int4/int8 group size along K; `accuracy_level` is MatMulNBits'
    (0 = fp32 activations, 4 = int8 activations, faster on CPU); `lm_head_bits` None = 8 for int4/int8."""

    quant: str = "fp32"
    block_size: int = 32
    accuracy_level: int = 4
    lm_head_bits: int | None = None
    opset: int = 21

    def linear_bits(self, is_head: bool) -> int | None:
        bits = QUANT_BITS[self.quant]
        if bits is not None and is_head:
            return self.lm_head_bits or 8
        return bits

    @property
    def float_storage(self) -> np.dtype:
        return np.dtype(np.float16) if self.quant != "fp32" else np.dtype(np.float32)


WeightGetter = Callable[[str], np.ndarray]


def rope_caches(config: ModelConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """cos/sin `[L, D/2]` (mscale included) from the reference RotaryEmbedding, and the context length L.

    LongRoPE switches to the long factors only past `original_max_position_embeddings`; published MiniCPM4
    configs never get there (max == original max), so the graph's context is capped at the original max.
    """
    from edgecpm.layers import RotaryEmbedding

    length = config.max_position_embeddings
    if config.rope_scaling is not None:
        length = min(length, config.rope_scaling.original_max_position_embeddings)
    rot = RotaryEmbedding(config)
    cos, sin = rot.cos_sin(torch.arange(length), length)
    half = config.head_dim // 2
    return cos[:, :half].numpy().copy(), sin[:, :half].numpy().copy(), length


class DecoderGraph:
    """Emits the decoder into a `GraphBuilder`; weights are pulled one tensor at a time from `get`."""

    def __init__(
        self,
        g: GraphBuilder,
        config: ModelConfig,
        get: WeightGetter,
        opts: OnnxOptions,
        sparse_layers: bool,
        tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.g, self.cfg, self.get, self.opts, self.tick = g, config, get, opts, tick
        self.sparse_layers = sparse_layers
        self.shapes: dict[str, tuple[int, int]] = {}
        self.blocks: dict[str, tuple[int, int]] = {}  # MatMulNBits stem -> (bits, block_size)
        self.stems: dict[tuple[str, int], str] = {}  # (weight key, bits asked) -> stem written
        self.all_gqa = True  # GenAI may share past/present buffers only if every layer is GQA

    # ---- weights ----
    def linear(self, x: str, names: list[str], key: str, is_head: bool = False) -> str:
        """x @ W^T for the row-concatenation of the named `[N, K]` weights (q/k/v or gate/up packing)."""
        g, opts = self.g, self.opts
        bits = opts.linear_bits(is_head)
        init = f"{key}.{'q' + str(bits) if bits else opts.quant}"
        if bits is None:
            if not g.has(init):
                w = self.fetch(names)
                g.initializer(init, np.ascontiguousarray(w.T, dtype=opts.float_storage))
                del w
                self.tick()
            weight = init
            if opts.float_storage != np.float32:
                weight = g.op("Cast", [init], to=TensorProto.FLOAT, name=f"{key}/cast")
            return g.op("MatMul", [x, weight], name=g.fresh(f"{key}/MatMul"))
        init = self.quantized(names, key, bits)
        n, k = self.shapes[init]
        bits, block = self.blocks[init]
        return g.op(
            "MatMulNBits",
            [x, init + ".B", init + ".scales"],
            domain=MS,
            name=g.fresh(f"{key}/MatMulNBits"),
            K=k,
            N=n,
            bits=bits,
            block_size=block,
            accuracy_level=opts.accuracy_level,
        )

    def quantized(self, names: list[str], key: str, bits: int) -> str:
        """Write `<key>.q<bits>.B` / `.scales` (MatMulNBits layout) once; returns the `<key>.q<bits>` stem.
        bits=2 (quant tq2) packs a ternary weight losslessly (`<key>.t2`); a weight that is not ternary falls
        back to 8 bits. `self.blocks[stem]` is the (bits, block_size) the node must use."""
        g, asked = self.g, (key, bits)
        if asked in self.stems:
            return self.stems[asked]
        w = self.fetch(names)
        bq = quantize_ternary(w) if bits == 2 else None
        if bq is None:
            bits = 8 if bits == 2 else bits
            bq = quantize(w, bits, self.opts.block_size)
        init = f"{key}.t2" if bq.bits == 2 else f"{key}.q{bq.bits}"
        self.shapes[init] = w.shape
        self.blocks[init] = (bq.bits, bq.block_size)
        del w
        g.initializer(init + ".B", bq.packed)
        g.initializer(init + ".scales", bq.scales)
        del bq
        self.tick()
        self.stems[asked] = init
        return init

    def embedding(self, name: str) -> str:
        """`Embed(input_ids)` in fp32. A tied table that the head quantizes is stored once: the lookup is a
        `GatherBlockQuantized` over the head's MatMulNBits bytes (as llama.cpp shares its q8_0 token_embd)."""
        g, opts, bits = self.g, self.opts, self.opts.linear_bits(True)
        if self.cfg.tie_word_embeddings and bits is not None:
            init = self.quantized([name], "lm_head", bits)
            n, k = self.shapes[init]
            bits, block = self.blocks[init]
            width = -(-k // block) * block
            data = g.alias(init + ".B", "embed_tokens.q", [n, width * bits // 8])
            h = g.op(
                "GatherBlockQuantized",
                [data, "input_ids", init + ".scales"],
                domain=MS,
                name="/embed/GatherBlockQuantized",
                gather_axis=0,
                quantize_axis=1,
                block_size=block,
                bits=bits,
            )
            if width != k:
                h = g.op("Slice", [h, g.const([0]), g.const([k]), g.const([-1])], name="/embed/unpad")
            return h
        emb = self.get(name)
        g.initializer("embed_tokens", emb.astype(opts.float_storage, copy=False))
        del emb  # stream: never hold more than the tensor being written
        self.tick()
        h = g.op("Gather", ["embed_tokens", "input_ids"], axis=0, name="/embed/Gather")
        if opts.float_storage != np.float32:
            h = g.op("Cast", [h], to=TensorProto.FLOAT, name="/embed/Cast")
        return h

    def fetch(self, names: list[str]) -> np.ndarray:
        """float32 `[N, K]`: one weight, or the row-concatenation of several (packed q/k/v, gate/up)."""
        if len(names) == 1:
            return self.get(names[0])
        return np.concatenate([self.get(n) for n in names], axis=0)

    def norm_weight(self, name: str, divisor: float = 1.0) -> str:
        if not self.g.has(name):
            w = self.get(name)
            self.g.initializer(name, (w / divisor).astype(np.float32) if divisor != 1.0 else w)
        return name

    # ---- graph ----
    def build(self) -> None:
        cfg, g = self.cfg, self.g
        hkv, d = cfg.num_kv_heads, cfg.head_dim
        softmax = [i for i, s in enumerate(cfg.layers) if s.attention != "lightning"]
        g.add_input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
        g.add_input("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])
        for i in softmax:
            for kv in ("key", "value"):
                g.add_input(
                    f"past_key_values.{i}.{kv}",
                    TensorProto.FLOAT,
                    ["batch_size", hkv, "past_sequence_length", d],
                )
        g.add_output("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", cfg.vocab_size])
        for i in softmax:
            for kv in ("key", "value"):
                g.add_output(f"present.{i}.{kv}", TensorProto.FLOAT, ["batch_size", hkv, "total_sequence_length", d])
        for i, spec in enumerate(cfg.layers):
            if spec.attention == "lightning":  # recurrent state in, new state out (SALA)
                declare_state(self, i)
            elif spec.attention == "infllmv2" and self.sparse_layers:  # compressed keys in, grown keys out
                declare_compressed_keys(g, i, hkv, d)

        if any(cfg.layers[i].use_rope for i in softmax):  # HyPE: SALA's NoPE softmax layers need no table
            cos, sin, _ = rope_caches(cfg)
            g.initializer("cos_cache", cos)
            g.initializer("sin_cache", sin)
        # shared mask reformatting for GQA: seqlens_k = sum(mask) - 1, total_len = mask.shape[1]
        msum = g.op("ReduceSum", ["attention_mask", g.const([1])], keepdims=0, name="/mask/ReduceSum")
        mlast = g.op("Sub", [msum, g.const(1)], name="/mask/Sub")
        self.seqlens_k = g.op("Cast", [mlast], to=TensorProto.INT32, name="/mask/seqlens_k")
        mshape = g.op("Shape", ["attention_mask"], name="/mask/Shape")
        total = g.op("Gather", [mshape, g.const(1)], axis=0, name="/mask/total")
        self.total_len = g.op("Cast", [total], to=TensorProto.INT32, name="/mask/total_i32")

        emb_name = "model.embed_tokens.weight"
        h = g.op("Mul", [self.embedding(emb_name), g.const(cfg.scale_emb, np.float32)], name="/embed/scale")

        branch: str | None = None
        for index, spec in enumerate(cfg.layers):
            # one scalar per distinct ODE step size (shared layers integrated in fewer steps use h*L/N)
            rs = g.const(cfg.layer_residual_scale(index), np.float32, name=f"residual_scale_{spec.step:g}")
            p = f"model.layers.{spec.weight_layer}"
            w_in = self.norm_weight(f"{p}.input_layernorm.weight")
            xn, h = self.add_norm(h, branch, w_in, f"/layers.{index}/input_norm")
            if spec.attention == "lightning":
                attn = lightning_attention(self, index, spec, p, xn)
            else:
                attn = self.attention(index, spec, p, xn)
            branch = g.op("Mul", [attn, rs], name=f"/layers.{index}/attn/residual_scale")
            w_post = self.norm_weight(f"{p}.post_attention_layernorm.weight")
            xn, h = self.add_norm(h, branch, w_post, f"/layers.{index}/post_norm")
            gu = self.linear(
                xn,
                [f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"],
                f"{p}.mlp.gate_up",
            )
            gate, up = g.op(
                "Split",
                [gu, g.const([cfg.intermediate_size] * 2)],
                n_out=2,
                axis=-1,
                name=f"/layers.{index}/mlp/Split",
            )
            act = g.op(
                "Mul",
                [gate, g.op("Sigmoid", [gate], name=f"/layers.{index}/mlp/Sigmoid")],
                name=f"/layers.{index}/mlp/silu",
            )
            prod = g.op("Mul", [act, up], name=f"/layers.{index}/mlp/gate_mul_up")
            down = self.linear(prod, [f"{p}.mlp.down_proj.weight"], f"{p}.mlp.down")
            branch = g.op("Mul", [down, rs], name=f"/layers.{index}/mlp/residual_scale")
        w_final = self.norm_weight("model.norm.weight", divisor=cfg.logit_scale)
        xn, _ = self.add_norm(h, branch, w_final, "/final_norm", need_sum=False)
        head = "lm_head.weight" if not cfg.tie_word_embeddings else emb_name
        if cfg.tie_word_embeddings and self.opts.quant == "fp32":
            # reuse the embedding table: logits = x @ E^T without a second copy
            g.op("FusedMatMul", [xn, "embed_tokens"], domain=MS, transB=1, outputs=["logits"], name="/lm_head")
        else:
            out = self.linear(xn, [head], "lm_head", is_head=True)
            g.op("Identity", [out], outputs=["logits"], name="/lm_head/out")

    def add_norm(self, h: str, branch: str | None, weight: str, name: str, need_sum: bool = True) -> tuple[str, str]:
        """RMSNorm(h + branch) and the new residual stream h + branch (fused when there is a branch)."""
        g, eps = self.g, self.cfg.rms_norm_eps
        if branch is None:
            return g.op("SimplifiedLayerNormalization", [h, weight], epsilon=eps, axis=-1, stash_type=1, name=name), h
        outs = [f"{name}/out0", "", "", f"{name}/sum" if need_sum else ""]
        g.op(
            "SkipSimplifiedLayerNormalization",
            [h, branch, weight],
            domain=MS,
            epsilon=eps,
            outputs=outs,
            name=name,
        )
        return outs[0], outs[3]

    def attention(self, index: int, spec, p: str, xn: str) -> str:
        cfg, g = self.cfg, self.g
        d = cfg.head_dim
        a = f"{p}.self_attn"
        qkv = self.linear(xn, [f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight"], f"{a}.qkv")
        past_k, past_v = f"past_key_values.{index}.key", f"past_key_values.{index}.value"
        pres_k, pres_v = f"present.{index}.key", f"present.{index}.value"
        sparse_here = spec.attention == "infllmv2" and self.sparse_layers
        if sparse_here and d % 16 == 0 and cfg.sparse.dense_len > 0:
            self.all_gqa = False
            out = self.switched_attention(index, spec, qkv, past_k, past_v, pres_k, pres_v)
        elif sparse_here or d % 16:
            # GQA needs head_dim % 16 == 0; other layers run in standard ops (+ the custom sparse node)
            self.all_gqa = False
            out = self.explicit_attention(index, spec, qkv, past_k, past_v, pres_k, pres_v)
        else:
            out = self.fused_attention(spec, qkv, past_k, past_v, [f"/layers.{index}/attn/out", pres_k, pres_v])[0]
        if spec.output_gate:
            gate = self.linear(xn, [f"{a}.o_gate.weight"], f"{a}.o_gate")
            out = g.op(
                "Mul",
                [out, g.op("Sigmoid", [gate], name=f"/layers.{index}/attn/gate_sigmoid")],
                name=f"/layers.{index}/attn/gate",
            )
        return self.linear(out, [f"{a}.o_proj.weight"], f"{a}.o_proj")

    def fused_attention(self, spec, qkv: str, past_k: str, past_v: str, outputs: list[str]) -> list[str]:
        """`com.microsoft::GroupQueryAttention` on the packed qkv with rotary fused in: [out, present k, v]."""
        cfg = self.cfg
        rope = ["cos_cache", "sin_cache"] if spec.use_rope else ["", ""]
        return self.g.op(
            "GroupQueryAttention",
            [qkv, "", "", past_k, past_v, self.seqlens_k, self.total_len, *rope],
            domain=MS,
            outputs=outputs,
            name=outputs[0].rsplit("/", 1)[0] + "/GQA",
            num_heads=cfg.num_heads,
            kv_num_heads=cfg.num_kv_heads,
            do_rotary=int(spec.use_rope),
            rotary_interleaved=0,
            scale=1.0 / float(np.sqrt(cfg.head_dim)),
        )

    def switched_attention(self, index: int, spec, qkv: str, past_k: str, past_v: str, pres_k: str, pres_v: str) -> str:
        """An InfLLM v2 layer is dense below dense_len: an `If` on the total length runs the fused
        GroupQueryAttention there and the explicit path with the sparse node only past it (never both). Both
        branches grow the compressed-key state the same way, so a call past dense_len finds it complete."""
        cfg, g = self.cfg, self.g
        d, sp = cfg.head_dim, cfg.sparse
        n = f"/layers.{index}/attn"
        if spec.use_rope:
            self.rope_rows()  # emitted in the main graph: values made inside a branch are not visible outside it
        with g.branch() as dense_nodes:
            dense = self.fused_attention(
                spec, qkv, past_k, past_v, [f"{n}/dense/out", f"{n}/dense/present_k", f"{n}/dense/present_v"]
            )
            dense.append(update_state(g, index, dense[1], sp, d, f"{n}/dense", output=f"{n}/dense/ck"))
        with g.branch() as sparse_nodes:
            k_s, v_s, ck_s = f"{n}/sparse/present_k", f"{n}/sparse/present_v", f"{n}/sparse/ck"
            out_s = self.explicit_attention(index, spec, qkv, past_k, past_v, k_s, v_s, f"{n}/sparse", ck_s)

        def body(nodes: list, outs: list[str], name: str) -> onnx.GraphProto:
            return helper.make_graph(
                nodes, name, [], [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs]
            )

        use_dense = g.op("Less", [self.total_len, g.const(sp.dense_len, np.int32)], name=f"{n}/use_dense")
        return g.op(
            "If",
            [use_dense],
            outputs=[f"{n}/out", pres_k, pres_v, state_names(index)[1]],
            name=f"{n}/dense_or_sparse",
            then_branch=body(dense_nodes, dense, f"layer{index}_dense"),
            else_branch=body(sparse_nodes, [out_s, k_s, v_s, ck_s], f"layer{index}_sparse"),
        )[0]

    def explicit_attention(
        self,
        index: int,
        spec,
        qkv: str,
        past_k: str,
        past_v: str,
        pres_k: str,
        pres_v: str,
        prefix: str | None = None,
        ck_output: str | None = None,
    ) -> str:
        """Rotary and cache growth in standard ops, then the custom InfLLM v2 node (sparse layers) or causal
        softmax attention in standard ops, on `[B,H,T,D]` tensors. `prefix`/`ck_output`: names inside an `If`
        branch (values there must not collide with the main graph's)."""
        cfg, g = self.cfg, self.g
        hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        n = prefix or f"/layers.{index}/attn"
        q, k, v = g.op("Split", [qkv, g.const([hq * d, hkv * d, hkv * d])], n_out=3, axis=-1, name=f"{n}/Split")

        def heads(x: str, h: int, tag: str) -> str:
            r = g.op("Reshape", [x, g.const([0, 0, h, d])], name=f"{n}/{tag}/Reshape")
            return g.op("Transpose", [r], perm=[0, 2, 1, 3], name=f"{n}/{tag}/Transpose")

        q, k, v = heads(q, hq, "q"), heads(k, hkv, "k"), heads(v, hkv, "v")
        if spec.use_rope:
            cos, sin = self.rope_rows()
            q, k = self.rotate(q, cos, sin, f"{n}/q_rope"), self.rotate(k, cos, sin, f"{n}/k_rope")
        g.op("Concat", [past_k, k], axis=2, outputs=[pres_k], name=f"{n}/concat_k")
        g.op("Concat", [past_v, v], axis=2, outputs=[pres_v], name=f"{n}/concat_v")
        if spec.attention != "infllmv2" or not self.sparse_layers:
            out = self.causal_attention(q, pres_k, pres_v, n)
            t = g.op("Transpose", [out], perm=[0, 2, 1, 3], name=f"{n}/out/Transpose")
            return g.op("Reshape", [t, g.const([0, 0, hq * d])], name=f"{n}/out/Reshape")
        sp = cfg.sparse
        ck = update_state(g, index, pres_k, sp, d, n, output=ck_output)  # compressed keys kept as graph state
        out = g.op(
            SPARSE_OP,
            [q, pres_k, pres_v, ck],
            domain=SPARSE_DOMAIN,
            name=f"{n}/{SPARSE_OP}",
            kernel_size=sp.kernel_size,
            kernel_stride=sp.kernel_stride,
            init_blocks=sp.init_blocks,
            block_size=sp.block_size,
            window_size=sp.window_size,
            topk=sp.topk,
            dense_len=sp.dense_len,
        )
        t = g.op("Transpose", [out], perm=[0, 2, 1, 3], name=f"{n}/out/Transpose")
        return g.op("Reshape", [t, g.const([0, 0, hq * d])], name=f"{n}/out/Reshape")

    def causal_attention(self, q: str, k: str, v: str, n: str) -> str:
        """softmax(q k^T / sqrt(D) + causal mask) v with KV heads repeated for GQA (bottom-right causal)."""
        cfg, g = self.cfg, self.g
        group, hkv, d = cfg.num_heads // cfg.num_kv_heads, cfg.num_kv_heads, cfg.head_dim

        def repeat(x: str, tag: str) -> str:
            if group == 1:
                return x
            u = g.op("Unsqueeze", [x, g.const([2])], name=f"{n}/{tag}/Unsqueeze")
            shape = g.op("Shape", [u], name=f"{n}/{tag}/Shape")
            target = g.op(
                "Concat",
                [
                    g.op("Slice", [shape, g.const([0]), g.const([2])], name=f"{n}/{tag}/s0"),
                    g.const([group]),
                    g.op("Slice", [shape, g.const([3]), g.const([5])], name=f"{n}/{tag}/s1"),
                ],
                axis=0,
                name=f"{n}/{tag}/target",
            )
            e = g.op("Expand", [u, target], name=f"{n}/{tag}/Expand")
            return g.op("Reshape", [e, g.const([0, hkv * group, -1, d])], name=f"{n}/{tag}/Reshape")

        kr, vr = repeat(k, "k_rep"), repeat(v, "v_rep")
        kt = g.op("Transpose", [kr], perm=[0, 1, 3, 2], name=f"{n}/kT")
        scores = g.op(
            "Mul",
            [g.op("MatMul", [q, kt], name=f"{n}/qk"), g.const(1.0 / np.sqrt(d), np.float32)],
            name=f"{n}/scale",
        )
        mask = self.causal_mask()
        masked = g.op("Where", [mask, scores, g.const(-np.inf, np.float32)], name=f"{n}/mask")
        probs = g.op("Softmax", [masked], axis=-1, name=f"{n}/softmax")
        return g.op("MatMul", [probs, vr], name=f"{n}/pv")

    def causal_mask(self) -> str:
        """bool `[T, S]`: key j is visible to new query i iff j <= S - T + i (computed once per graph)."""
        if hasattr(self, "_mask"):
            return self._mask
        g = self.g
        total = g.op(
            "Gather",
            [g.op("Shape", ["attention_mask"], name="/causal/mask_shape"), g.const(1)],
            axis=0,
            name="/causal/total",
        )
        seq = g.op(
            "Gather",
            [g.op("Shape", ["input_ids"], name="/causal/ids_shape"), g.const(1)],
            axis=0,
            name="/causal/seq",
        )
        start = g.op("Sub", [total, seq], name="/causal/start")
        qpos = g.op(
            "Unsqueeze",
            [g.op("Range", [start, total, g.const(1)], name="/causal/qpos"), g.const([1])],
            name="/causal/qpos_col",
        )
        kpos = g.op("Range", [g.const(0), total, g.const(1)], name="/causal/kpos")
        self._mask = g.op("LessOrEqual", [kpos, qpos], name="/causal/allowed")
        return self._mask

    def rope_rows(self) -> tuple[str, str]:
        """cos/sin `[1,1,S,D]` for positions past_len .. past_len+S-1 (computed once per graph)."""
        if hasattr(self, "_rope_rows"):
            return self._rope_rows
        g = self.g
        total = g.op(
            "Gather",
            [g.op("Shape", ["attention_mask"], name="/rope/mask_shape"), g.const(1)],
            axis=0,
            name="/rope/total",
        )
        seq = g.op(
            "Gather",
            [g.op("Shape", ["input_ids"], name="/rope/ids_shape"), g.const(1)],
            axis=0,
            name="/rope/seq",
        )
        start = g.op("Sub", [total, seq], name="/rope/start")
        pos = g.op("Range", [start, total, g.const(1)], name="/rope/positions")
        rows = []
        for name in ("cos_cache", "sin_cache"):
            half = g.op("Gather", [name, pos], axis=0, name=f"/rope/{name}/Gather")
            full = g.op("Concat", [half, half], axis=-1, name=f"/rope/{name}/Concat")
            rows.append(g.op("Unsqueeze", [full, g.const([0, 1])], name=f"/rope/{name}/Unsqueeze"))
        self._rope_rows = (rows[0], rows[1])
        return self._rope_rows

    def rotate(self, x: str, cos: str, sin: str, n: str) -> str:
        g, half = self.g, self.cfg.head_dim // 2
        x1, x2 = g.op("Split", [x, g.const([half, half])], n_out=2, axis=-1, name=f"{n}/Split")
        rot = g.op("Concat", [g.op("Neg", [x2], name=f"{n}/Neg"), x1], axis=-1, name=f"{n}/Concat")
        return g.op(
            "Add",
            [g.op("Mul", [x, cos], name=f"{n}/Mul_cos"), g.op("Mul", [rot, sin], name=f"{n}/Mul_sin")],
            name=f"{n}/Add",
        )
