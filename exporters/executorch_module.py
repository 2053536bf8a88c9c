"""The export-friendly decoder that becomes an ExecuTorch `.pte`, built from the reference `Model`'s weights.

Why a second module: ExecuTorch's LLM runner needs `forward(tokens[1,S] int64, input_pos[1] int64) -> logits`
with the KV cache held in mutable buffers, which the reference `Model` (explicit `KVCache` object, Python-side
state) cannot be traced into. This module is the same math re-laid out for export, and it is tested against
the reference `Model` on the same tokens (tests/test_executorch_*.py):

* µP scalings are folded into weights (embedding x scale_emb, o_proj/down_proj x residual_scale,
  lm_head / (hidden/dim_model_base)); the head is an untied `nn.Linear` so weight quantization reaches it.
* Dense layers use ExecuTorch's `llama::update_cache` + `llama::custom_sdpa` (seq-major cache
  `[1, ctx, Hkv, D]`, GQA inside the kernel): ops the stock Android library links and its Llama export uses.
* InfLLM v2 layers keep their compressed keys (mean-pooled key windows) in a third mutable buffer, updated
  per call for the windows the new tokens touch (never recompressing the prefix), and run the vectorized
  sparse algorithm (`runtime_kernels.infllmv2_vectorized.sparse_attention_traced`) on the visible cache with
  those keys. Below `dense_len` a `torch.cond` runs `llama::custom_sdpa` instead: only one branch executes.
  With `sparse_kernel="compiled"` the sparse branch is one `edgecpm::infllmv2_sparse_cache` call instead (the
  compiled C++ kernel, `runtime_kernels.infllmv2_executorch`), which reads the three buffers in place.
* LongRoPE cos/sin are precomputed tables for every cache position (short or long factors chosen per call by
  the total length, as the reference does).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgecpm import runtime_kernels  # noqa: F401  (registers torch.ops.edgecpm.infllmv2_attention)
from edgecpm.config import ModelConfig, SparseConfig
from edgecpm.errors import EdgecpmError
from edgecpm.layers import RotaryEmbedding
from edgecpm.model import Model
from edgecpm.runtime_kernels import infllmv2_executorch  # noqa: F401  (torch.ops.edgecpm.infllmv2_sparse_cache)


def _linear_from(weight: torch.Tensor, scale: float = 1.0) -> nn.Linear:
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=False)
    with torch.no_grad():
        lin.weight.copy_(weight.float() * scale)
    return lin


class ETRMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().float().clone(), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotary on `[B, S, H, D]` with cos/sin `[S, D]`."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


class ETAttention(nn.Module):
    """One logical layer's attention with its own KV cache buffers (shared layers share the linears)."""

    def __init__(
        self,
        src: nn.Module,
        config: ModelConfig,
        max_context: int,
        residual_scale: float,
        sparse: SparseConfig | None,
        projections: dict[str, nn.Linear] | None = None,
        max_seq_len: int = 128,
        sparse_kernel: str = "decompose",
    ) -> None:
        super().__init__()
        if sparse_kernel not in SPARSE_KERNELS:
            raise EdgecpmError(f"sparse kernel mode {sparse_kernel!r}; expected one of {', '.join(SPARSE_KERNELS)}")
        self.sparse_kernel = sparse_kernel
        self.num_heads, self.num_kv_heads = src.num_heads, src.num_kv_heads
        self.head_dim = src.head_dim
        self.use_rope = src.use_rope
        self.sparse = sparse
        self.max_context = max_context
        if projections is None:
            projections = {
                "q_proj": _linear_from(src.q_proj.weight),
                "k_proj": _linear_from(src.k_proj.weight),
                "v_proj": _linear_from(src.v_proj.weight),
                "o_proj": _linear_from(src.o_proj.weight, residual_scale),
            }
            if src.o_gate is not None:
                projections["o_gate"] = _linear_from(src.o_gate.weight)
        self.projections = projections
        for name, mod in projections.items():
            self.add_module(name, mod)
        self.mode = sparse_mode(sparse, max_context)
        rows = max_context
        if self.mode != "dense":
            rows = self._sparse_buffers(sparse, max_context, max_seq_len)
        shape = (1, rows, self.num_kv_heads, self.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)

    def _sparse_buffers(self, sp: SparseConfig, max_context: int, max_seq_len: int) -> int:
        """Allocate the compressed-key buffer; returns the KV cache rows (padded for the static window read).

        A call writing positions [start, start+S) recomputes the `windows` kernels from index
        lo = max(start - ks + st, 0) // st: every kernel that overlaps the new tokens, so each kernel is pooled
        in the call that writes its last key (and again after a rollback rewrites it). Kernels reaching past
        the written tokens hold partial sums until then; block scoring never looks at them (a kernel counts
        for a query only once it lies entirely in the query's past).
        """
        ks, st, bs = sp.kernel_size, sp.kernel_stride, sp.block_size
        self.windows = (max_seq_len + ks - 2) // st + 2
        self.window_len = (self.windows - 1) * st + ks
        blocks = -(-max_context // bs)
        ck_rows = max(blocks * (bs // st), max_context // st + self.windows + 1)
        self.register_buffer("ck_cache", torch.zeros(1, ck_rows, self.num_kv_heads, self.head_dim), persistent=False)
        return max_context + self.window_len + st

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int, total: torch.Tensor
    ) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        if self.use_rope:
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        torch.ops.llama.update_cache(k, self.k_cache, start)
        torch.ops.llama.update_cache(v, self.v_cache, start)
        if self.mode == "dense":
            out = self._dense(q, start)
        else:
            self._update_compressed(start)
            if self.mode == "sparse":
                out = self._sparse(q, start, s)
            elif not torch.compiler.is_compiling():  # eager (tests, reference runs): a plain branch
                dense = start + s < self.sparse.dense_len
                out = self._dense_below(q, start) if dense else self._sparse(q, start, s)
            else:  # dense while the context is shorter than dense_len, as published; one branch runs
                # the branches take the position as a tensor: ExecuTorch's passes cannot replay symbolic
                # integer operands of a cond, so each branch reads it again (.item())
                out = torch.cond(
                    total < self.sparse.dense_len,
                    lambda q_, first: self._dense_below(q_, self._position(first, s)),
                    lambda q_, first: self._sparse(q_, self._position(first, s), s),
                    (q, total - s),
                )
        out = out.reshape(b, s, self.num_heads * self.head_dim)
        if "o_gate" in self.projections:
            out = out * torch.sigmoid(self.o_gate(x))
        return self.o_proj(out)

    def _position(self, first: torch.Tensor, s: int) -> int:
        start = first.item()
        torch._check(start >= 0)
        torch._check(start + s <= self.max_context)
        return start

    def _dense(self, q: torch.Tensor, start: int) -> torch.Tensor:
        return torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, start, None, 0, True)

    def _dense_below(self, q: torch.Tensor, start: int) -> torch.Tensor:
        """The dense branch of a switch layer (context below dense_len).

        With the compiled kernel: the same op with a block budget covering every block, i.e. exact causal dense
        attention (no block scoring runs). Its query tiles share each key/value block, which makes a long
        prefill 3-7x faster than `llama::custom_sdpa` on CPU (docs/executorch.md); the portable program keeps
        `custom_sdpa`, which every runtime links.
        """
        if self.sparse_kernel != "compiled":
            return self._dense(q, start)
        sc = self.sparse
        every_block = self.k_cache.shape[1] // sc.block_size + 1
        out = torch.ops.edgecpm.infllmv2_sparse_cache(
            q,
            self.k_cache,
            self.v_cache,
            self.ck_cache,
            start,
            sc.kernel_size,
            sc.kernel_stride,
            sc.init_blocks,
            sc.block_size,
            sc.window_size,
            every_block,
            1.0 / math.sqrt(self.head_dim),
        )
        return out.transpose(1, 2).contiguous()

    def _update_compressed(self, start: int) -> None:
        """Pool the key windows that overlap this call's tokens into `ck_cache` (a static-size window read)."""
        sp = self.sparse
        ks, st = sp.kernel_size, sp.kernel_stride
        lo = torch.sym_max(start - ks + st, 0) // st
        torch._check(lo * st + self.window_len <= self.k_cache.shape[1])
        torch._check(lo + self.windows <= self.ck_cache.shape[1])
        keys = self.k_cache.narrow(1, lo * st, self.window_len)  # [1, L, Hkv, D]
        if ks % st == 0:  # sums of stride-long chunks, then of ks/st neighbouring chunks
            r = ks // st
            chunks = keys.reshape(1, self.windows - 1 + r, st, self.num_kv_heads, self.head_dim).sum(2)
            pooled = chunks[:, : self.windows]
            for u in range(1, r):
                pooled = pooled + chunks[:, u : u + self.windows]
        else:
            span = (self.windows - 1) * st + 1
            pooled = keys[:, 0:span:st]
            for u in range(1, ks):
                pooled = pooled + keys[:, u : u + span : st]
        torch.ops.llama.update_cache(pooled * (1.0 / ks), self.ck_cache, lo)

    def _sparse(self, q: torch.Tensor, start: int, s: int) -> torch.Tensor:
        from edgecpm.runtime_kernels.infllmv2_vectorized import sparse_attention_traced

        sc = self.sparse
        if self.sparse_kernel == "compiled":  # one op over the whole buffers: no slice, no decomposed body
            out = torch.ops.edgecpm.infllmv2_sparse_cache(
                q,
                self.k_cache,
                self.v_cache,
                self.ck_cache,
                start,
                sc.kernel_size,
                sc.kernel_stride,
                sc.init_blocks,
                sc.block_size,
                sc.window_size,
                sc.topk,
                1.0 / math.sqrt(self.head_dim),
            )
            return out.transpose(1, 2).contiguous()
        total = start + s
        n_ck = (total + sc.block_size - 1) // sc.block_size * (sc.block_size // sc.kernel_stride)
        torch._check(n_ck <= self.ck_cache.shape[1])
        k = self.k_cache[:, :total].transpose(1, 2)
        v = self.v_cache[:, :total].transpose(1, 2)
        ck = self.ck_cache[:, :n_ck].transpose(1, 2)  # kernels past the last complete one are never visible
        out = sparse_attention_traced(q.transpose(1, 2), k, v, ck, sc)
        return out.transpose(1, 2).contiguous()  # the layout of custom_sdpa's output (torch.cond needs it)


class ETLightning(nn.Module):
    """A MiniCPM-SALA lightning layer with its recurrent state `[1, H, Dk, Dv]` in a mutable buffer.

    One call attends its S new tokens in the chunked form of `runtime_kernels.lightning` (intra-call attention
    under the decay mask plus the state carried in) and writes the new state back, so a chunked prefill and
    token-by-token decode continue from one another. A call at position 0 starts from a zero state. The
    rotary embedding is plain (theta from the config, no LongRoPE factors), as in the reference layer.
    """

    def __init__(self, src: nn.Module, config: ModelConfig, residual_scale: float) -> None:
        super().__init__()
        from edgecpm.runtime_kernels.lightning import sala_log_decay

        self.num_heads, self.num_kv_heads, self.head_dim = src.num_heads, src.num_kv_heads, src.head_dim
        self.use_rope, self.scale = src.use_rope, src.scale
        self.q_proj, self.k_proj = _linear_from(src.q_proj.weight), _linear_from(src.k_proj.weight)
        self.v_proj = _linear_from(src.v_proj.weight)
        self.o_proj = _linear_from(src.o_proj.weight, residual_scale)
        eps = config.rms_norm_eps
        self.q_norm = ETRMSNorm(src.q_norm.weight, eps) if src.q_norm is not None else None
        self.k_norm = ETRMSNorm(src.k_norm.weight, eps) if src.k_norm is not None else None
        self.o_norm = ETRMSNorm(src.o_norm.weight, eps) if src.o_norm is not None else None
        self.z_proj = _linear_from(src.z_proj.weight) if src.z_proj is not None else None
        d = self.head_dim
        inv_freq = 1.0 / (src.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)).float()
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("log_decay", sala_log_decay(self.num_heads)[None, :, None], persistent=False)
        self.register_buffer("state", torch.zeros(1, self.num_heads, d, d), persistent=False)

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * emb.cos() + rotated * emb.sin()

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int, total: torch.Tensor
    ) -> torch.Tensor:
        b, s, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(x).view(b, s, h, d)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, d)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.num_kv_heads != h:
            rep = h // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        first = total - s  # position of the first new token, as a tensor
        if self.use_rope:
            positions = torch.arange(s) + first
            q, k = self._rope(q, positions), self._rope(k, positions)
        g = self.log_decay  # [1, H, 1]
        i = torch.arange(s, dtype=torch.float32)
        diff = i[:, None] - i[None, :]
        mask = torch.exp(g[..., None] * diff.clamp(min=0)) * (diff >= 0).float()
        carried = self.state * (first > 0).float()  # a call at position 0 starts a new sequence
        out = torch.matmul(torch.matmul(q, k.transpose(-1, -2)) * mask, v)
        out = (out + torch.matmul(q * torch.exp(g * (i + 1))[..., None], carried)) * self.scale
        k_decayed = k * torch.exp(g * (s - 1 - i))[..., None]
        self.state.copy_(carried * torch.exp(g * s)[..., None] + torch.matmul(k_decayed.transpose(-1, -2), v))
        out = out.transpose(1, 2).reshape(b, s, h * d)
        if self.o_norm is not None:
            out = self.o_norm(out)
        if self.z_proj is not None:
            out = out * torch.sigmoid(self.z_proj(x))
        return self.o_proj(out)


# how the sparse branch runs: the decomposed vectorized body (portable: stock runtime and Android library) or
# the compiled kernel library's op (the runtime must load `libedgecpm_et.so` first; the backend does)
SPARSE_KERNELS = ("decompose", "compiled")


def sparse_mode(sparse: SparseConfig | None, max_context: int) -> str:
    """How an InfLLM v2 layer is exported: "dense" when no context the program accepts reaches dense_len,
    "sparse" when every context does, else "switch" (a `torch.cond` on the current length: one branch runs)."""
    if sparse is None or max_context < sparse.dense_len:
        return "dense"
    if sparse.dense_len <= 1:
        return "sparse"
    return "switch"


class ETDecoderLayer(nn.Module):
    def __init__(self, attn: ETAttention, in_norm: ETRMSNorm, post_norm: ETRMSNorm, mlp: nn.ModuleDict) -> None:
        super().__init__()
        self.attn = attn
        self.input_norm = in_norm
        self.post_norm = post_norm
        self.mlp = mlp

    def forward(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int, total: torch.Tensor
    ) -> torch.Tensor:
        h = h + self.attn(self.input_norm(h), cos, sin, start, total)
        x = self.post_norm(h)
        return h + self.mlp["down_proj"](F.silu(self.mlp["gate_proj"](x)) * self.mlp["up_proj"](x))


class ETDecoder(nn.Module):
    """`forward(tokens [1,S] int64, input_pos [1] int64) -> logits` ([1,V] last row, or [1,S,V])."""

    def __init__(
        self,
        model: Model,
        max_context: int,
        all_logits: bool = False,
        max_seq_len: int = 128,
        sparse_kernel: str = "decompose",
    ) -> None:
        super().__init__()
        cfg = model.config
        self.config = cfg
        self.max_context = max_context
        self.all_logits = all_logits
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        with torch.no_grad():
            self.embed.weight.copy_(model.embed_tokens.weight.float() * cfg.scale_emb)
        self.embed.weight.requires_grad_(False)
        head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
        self.lm_head = _linear_from(head, 1.0 / cfg.logit_scale)
        self.norm = ETRMSNorm(model.norm.weight, cfg.rms_norm_eps)
        # shared layers reuse one set of modules (stored once in the .pte) per (weights, ODE step size), since
        # the residual scale is folded into o_proj / down_proj
        shared: dict[tuple[int, float], tuple[dict[str, nn.Linear], ETRMSNorm, ETRMSNorm, nn.ModuleDict]] = {}
        layers = []
        for index, spec in enumerate(cfg.layers):
            rs = cfg.layer_residual_scale(index)
            key = (spec.weight_layer, spec.step)
            src = model.layers[str(spec.weight_layer)]
            if spec.attention == "lightning":  # recurrent state per logical layer; linears not shared
                n1 = ETRMSNorm(src.input_layernorm.weight, cfg.rms_norm_eps)
                n2 = ETRMSNorm(src.post_attention_layernorm.weight, cfg.rms_norm_eps)
                mlp = nn.ModuleDict(
                    {
                        "gate_proj": _linear_from(src.mlp.gate_proj.weight),
                        "up_proj": _linear_from(src.mlp.up_proj.weight),
                        "down_proj": _linear_from(src.mlp.down_proj.weight, rs),
                    }
                )
                layers.append(ETDecoderLayer(ETLightning(src.self_attn, cfg, rs), n1, n2, mlp))
                continue
            sparse = cfg.sparse if spec.attention == "infllmv2" else None
            if sparse is not None and sparse.use_nope:
                raise EdgecpmError(
                    "InfLLM v2 with use_nope (block selection on pre-RoPE keys) has no "
                    "ExecuTorch op form yet; export a checkpoint with use_nope=false"
                )
            if key in shared:
                proj, n1, n2, mlp = shared[key]
                attn = ETAttention(src.self_attn, cfg, max_context, rs, sparse, proj, max_seq_len, sparse_kernel)
            else:
                attn = ETAttention(
                    src.self_attn, cfg, max_context, rs, sparse, max_seq_len=max_seq_len, sparse_kernel=sparse_kernel
                )
                n1 = ETRMSNorm(src.input_layernorm.weight, cfg.rms_norm_eps)
                n2 = ETRMSNorm(src.post_attention_layernorm.weight, cfg.rms_norm_eps)
                mlp = nn.ModuleDict(
                    {
                        "gate_proj": _linear_from(src.mlp.gate_proj.weight),
                        "up_proj": _linear_from(src.mlp.up_proj.weight),
                        "down_proj": _linear_from(src.mlp.down_proj.weight, rs),
                    }
                )
                shared[key] = (attn.projections, n1, n2, mlp)
            layers.append(ETDecoderLayer(attn, n1, n2, mlp))
        self.layers = nn.ModuleList(layers)
        self._rope_tables(cfg, max_context)
        for p in self.parameters():
            p.requires_grad_(False)

    def _rope_tables(self, cfg: ModelConfig, n: int) -> None:
        rotary = RotaryEmbedding(cfg)
        pos = torch.arange(n)
        # the reference picks the factor set by the total length (short unless it exceeds original_max)
        cos_s, sin_s = rotary.cos_sin(pos, 1)
        cos_l, sin_l = rotary.cos_sin(pos, n + 1 if rotary.short is None else rotary.original_max + 1)
        self.switch_len = rotary.original_max if rotary.short is not None else math.inf
        self.two_tables = bool(
            rotary.short is not None and n > rotary.original_max and not torch.equal(rotary.short, rotary.long)
        )
        self.register_buffer("cos_short", cos_s, persistent=False)
        self.register_buffer("sin_short", sin_s, persistent=False)
        if self.two_tables:
            self.register_buffer("cos_long", cos_l, persistent=False)
            self.register_buffer("sin_long", sin_l, persistent=False)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        s = tokens.shape[1]
        start = input_pos[0].item()
        torch._check_is_size(start)
        torch._check(start + s <= self.max_context)
        positions = torch.arange(s) + input_pos[0]
        total = input_pos[0] + s  # context length after this call, as a tensor (for the dense_len switch)
        cos, sin = self.cos_short[positions], self.sin_short[positions]
        if self.two_tables:
            use_long = (input_pos[0] + s) > self.switch_len
            cos = torch.where(use_long, self.cos_long[positions], cos)
            sin = torch.where(use_long, self.sin_long[positions], sin)
        h = self.embed(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, start, total)
        if not self.all_logits:
            h = h[:, -1, :]
        return self.lm_head(self.norm(h))
