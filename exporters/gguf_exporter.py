"""GGUF exporter: a MiniCPM4 HF checkpoint (or a GGUF) -> a GGUF file that llama.cpp loads as `minicpm`.

Stages: open the source (`open_checkpoint`), plan every tensor's name, shape and ggml type (so bad input fails
before a byte is written), write metadata, then stream tensors one at a time through `gguf.GGUFWriter`
(`add_tensor_info` up front, `write_tensor_data` per tensor), so the whole model is never in memory. K-quants
are produced from an F16 intermediate by llama.cpp's own quantizer. The export shell (`exporters.shell`) opens
the source, checks the model against the format table and installs the staging folder this module writes into.

Format facts (docs/gguf.md): all three µP scale keys are written (llama.cpp's defaults
differ), q/k rows are permuted to llama.cpp's interleaved rotary layout, LongRoPE factors are two global F32
tensors, a tied head has no `output.weight`, and InfLLM v2 settings go in `<arch>.infllm_v2.*` keys that
llama.cpp ignores and `GGUFSource` reads back.

Models llama.cpp cannot run (MiniCPM-SALA: lightning layers, output gates, NoPE layers) are written under
edgecpm's own architecture name (`formats.EDGECPM_GGUF_ARCH`) for edgecpm's torch backend: every checkpoint
tensor in HF row order (no rotary permutation), the full model config as one JSON key, and only the quants this
module produces itself (llama.cpp's quantizer cannot read such a file).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType

from edgecpm.config import ModelConfig
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.artifact import Artifact
from edgecpm.exporters.formats import EDGECPM_GGUF_ARCH, runtime_refusal
from edgecpm.exporters.gguf_quant import (
    QUANTS,
    SCHEMES,
    QuantScheme,
    byte_shape,
    llamacpp_quantize,
    quantize_tensor,
    scheme,
    tensor_type,
)
from edgecpm.exporters.gguf_vocab_writer import write_vocab
from edgecpm.exporters.registry import Option, run_export
from edgecpm.exporters.shell import ExportJob, Written
from edgecpm.progress import progress_bar
from edgecpm.weights.gguf_source import (
    BLOCK_TENSOR_NAMES,
    CONFIG_JSON_KEY,
    INFLLM_KEY_PREFIX,
    SHARED_LAYERS_KEY,
    GGUFSource,
    hf_to_gguf_name,
)

__all__ = ["QUANTS", "OPTIONS", "export", "prepare", "write", "plan_tensors"]
OPTIONS: dict[str, Option] = {
    # ternary quants: accept re-grouping finer (per-32 / per-128) ternary scales to one per 256 values
    "ternary_regroup": Option(
        False, lambda v: None if isinstance(v, bool) else f"ternary_regroup is {v!r}; expected true or false"
    ),
}
MODEL_FILE = "model.gguf"
GGML_QUANT_VERSION = 2


@dataclass(frozen=True)
class TensorPlan:
    gguf_name: str
    hf_name: str | None  # None: generated from the config (rope factors)
    shape: tuple[int, ...]  # numpy order (rows, row_length)
    qtype: GGMLQuantizationType
    permute_heads: int = 0  # >0: q/k rows permuted for llama.cpp's rotary layout with this many heads
    ternary: bool = False

    @property
    def nbytes(self) -> int:
        return int(np.prod(byte_shape(self.shape, self.qtype)))


def export(
    src: str | Path, out: str | Path, quant: str | None = None, progress: bool = True, **options: Any
) -> Artifact:
    """Export `src` (HF checkpoint dir or .gguf) to `out` (an artifact folder, or a path ending in .gguf)."""
    return run_export(src, "gguf", out, quant, progress, **options)


def prepare(job: ExportJob) -> tuple[QuantScheme, str, list[TensorPlan]]:
    """Every tensor's name, shape and type, before a byte is written."""
    s = scheme(job.quant)
    arch = target_architecture(job.config)
    if arch == EDGECPM_GGUF_ARCH:
        if s.llama_ftype is not None:
            raise EdgecpmError(
                f"quant {s.name} is made by llama.cpp's quantizer, which cannot read an {EDGECPM_GGUF_ARCH} GGUF "
                "(this model has layers llama.cpp cannot run); use one of "
                + ", ".join(n for n, q in SCHEMES.items() if q.llama_ftype is None)
            )
        return s, arch, plan_edgecpm_tensors(job.config, job.source, s)
    return s, arch, plan_tensors(job.config, job.source, s, arch)


def write(job: ExportJob, prepared: tuple[QuantScheme, str, list[TensorPlan]], stage: Path) -> Written:
    s, arch, plan = prepared
    model = stage / job.model_name
    regroup: dict | None = {} if s.ternary and job.options.get("ternary_regroup") else None
    if s.llama_ftype is None:
        write_gguf(model, job.config, job.source, plan, s, arch, job.src, job.progress, regroup)
    else:
        intermediate = stage / "intermediate-f16.gguf"
        write_gguf(intermediate, job.config, job.source, plan, s, arch, job.src, job.progress)
        with progress_bar(None, f"llama.cpp quantize -> {s.name}", enabled=job.progress) as bar:
            llamacpp_quantize(str(intermediate), str(model), s.llama_ftype, job.options["threads"])
            bar.update(1)
        intermediate.unlink()
    extra = dict(
        architecture=arch, tensor_types=_tensor_types(model), file_bytes=model.stat().st_size, source=str(job.src)
    )
    if regroup is not None:  # the error re-grouping ternary scales made, per tensor (relative RMS)
        errors = {n: (e / r) ** 0.5 if r else 0.0 for n, (e, r) in regroup.items()}
        extra["ternary_regroup_error"] = {
            "max": round(max(errors.values(), default=0.0), 6),
            "per_tensor": {n: round(v, 6) for n, v in errors.items()},
        }
    return Written([job.model_name], [], extra)


def target_architecture(config: ModelConfig) -> str:
    """`minicpm` for the MiniCPM family, `llama` for Llama sources, edgecpm's own architecture for a model
    llama.cpp cannot run (SALA); this refuses what a llama GGUF cannot hold."""
    if runtime_refusal(config, "gguf") is not None:
        return EDGECPM_GGUF_ARCH
    if config.head_dim * config.num_heads != config.hidden_size and config.architecture == "llama":
        raise EdgecpmError("head_dim * num_heads != hidden_size is not supported for llama GGUFs")
    return "llama" if config.architecture == "llama" else "minicpm"


def plan_tensors(config: ModelConfig, source: Any, s: QuantScheme, arch: str) -> list[TensorPlan]:
    """Every tensor of the output in order, with its type; raises before anything is written."""

    def entry(gname: str, hf: str, heads: int = 0, matrix: bool = False) -> TensorPlan:
        if hf not in source:
            raise EdgecpmError(f"tensor {hf!r} is missing from the checkpoint")
        shape = tuple(int(x) for x in source.shape(hf))
        return TensorPlan(gname, hf, shape, tensor_type(s, gname, shape), heads, s.ternary and matrix)

    plan = [entry("token_embd.weight", "model.embed_tokens.weight")]
    for i, spec in enumerate(config.layers):
        w = spec.weight_layer  # shared layers are duplicated: llama.cpp needs every blk.N
        for gsuffix, hsuffix in BLOCK_TENSOR_NAMES.items():
            heads = (
                config.num_heads
                if gsuffix == "attn_q.weight"
                else config.num_kv_heads
                if gsuffix == "attn_k.weight"
                else 0
            )
            plan.append(
                entry(
                    f"blk.{i}.{gsuffix}",
                    f"model.layers.{w}.{hsuffix}",
                    heads,
                    matrix=not gsuffix.endswith("norm.weight"),
                )
            )
    plan.append(entry("output_norm.weight", "model.norm.weight"))
    if not config.tie_word_embeddings:
        plan.append(entry("output.weight", "lm_head.weight"))
    rs = config.rope_scaling
    if rs is not None:
        n = (config.head_dim // 2,)
        if arch == "minicpm":
            plan += [
                TensorPlan("rope_factors_long.weight", None, n, GGMLQuantizationType.F32),
                TensorPlan("rope_factors_short.weight", None, n, GGMLQuantizationType.F32),
            ]
        elif rs.long_factor == rs.short_factor:
            plan.append(TensorPlan("rope_freqs.weight", None, n, GGMLQuantizationType.F32))
        else:
            raise EdgecpmError(
                "a llama GGUF holds one rope frequency table; this model has distinct LongRoPE long/short factors"
            )
    return plan


def plan_edgecpm_tensors(config: ModelConfig, source: Any, s: QuantScheme) -> list[TensorPlan]:
    """Every checkpoint tensor once (shared layers too), in HF row order: only edgecpm's loader reads this."""
    plan = []
    for hf in source.names():
        name = hf_to_gguf_name(hf, generic=True)
        if len(name.encode()) >= 64:  # GGML_MAX_NAME
            raise EdgecpmError(f"tensor {hf!r} has no GGUF name shorter than 64 bytes")
        shape = tuple(int(x) for x in source.shape(hf))
        ternary = s.ternary and len(shape) == 2 and name not in ("token_embd.weight", "output.weight")
        plan.append(TensorPlan(name, hf, shape, tensor_type(s, name, shape), 0, ternary))
    return plan


def write_gguf(
    path: Path,
    config: ModelConfig,
    source: Any,
    plan: list[TensorPlan],
    s: QuantScheme,
    arch: str,
    src_path: Path,
    progress: bool,
    regroup: dict | None = None,
) -> None:
    """Header and metadata first, then one tensor at a time (nothing else is held in memory)."""
    writer = GGUFWriter(path, arch)
    try:
        write_metadata(writer, config, s, arch)
        family = "minicpm" if arch == EDGECPM_GGUF_ARCH else arch  # the vocabulary's chat template default
        if isinstance(source, GGUFSource):
            write_vocab(writer, reader=source.reader, n_vocab=config.vocab_size, architecture=family)
        else:
            write_vocab(writer, hf_dir=src_path, n_vocab=config.vocab_size, architecture=family)
        for t in plan:
            writer.add_tensor_info(
                t.gguf_name, byte_shape(t.shape, t.qtype), np.dtype(np.uint8), t.nbytes, raw_dtype=t.qtype
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with progress_bar(len(plan), f"export gguf {s.name}", enabled=progress, unit="tensor") as bar:
            for t in plan:
                data = _tensor_bytes(t, config, source, regroup)
                if data.nbytes != t.nbytes:
                    raise EdgecpmError(f"tensor {t.gguf_name}: {data.nbytes} bytes, planned {t.nbytes}")
                writer.write_tensor_data(data)
                del data
                bar.update(1)
    finally:
        writer.close()


def write_metadata(writer: GGUFWriter, config: ModelConfig, s: QuantScheme, arch: str) -> None:
    """The keys llama.cpp reads, each through its typed `add_*` method (a wrong type is a load error)."""
    if config.name:
        writer.add_name(config.name)
    writer.add_block_count(config.num_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    if config.head_dim * config.num_heads != config.hidden_size:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        writer.add_rope_dimension_count(config.head_dim)
    elif arch == "llama":
        writer.add_rope_dimension_count(config.head_dim)
    if arch == EDGECPM_GGUF_ARCH:  # the whole config, which edgecpm's loader reads back (layer kinds, lightning)
        import json

        writer.add_string(f"{arch}.{CONFIG_JSON_KEY}", json.dumps(config.to_dict(), separators=(",", ":")))
    if arch in ("minicpm", EDGECPM_GGUF_ARCH):
        writer.add_embedding_scale(config.scale_emb)
        writer.add_residual_scale(config.layer_residual_scale(0))  # uniform (checked); the ODE step included
        writer.add_logit_scale(config.logit_scale)
        rs = config.rope_scaling
        if rs is not None:
            writer.add_rope_scaling_type(RopeScalingType.LONGROPE)
            if config.max_position_embeddings > rs.original_max_position_embeddings:
                # HF scales cos/sin by this; llama.cpp only does when the key is present
                writer.add_rope_scaling_orig_ctx_len(rs.original_max_position_embeddings)
                writer.add_rope_scaling_attn_factors(config.rope_mscale)
    if config.sparse is not None:
        for key, value in asdict(config.sparse).items():
            name = f"{arch}.{INFLLM_KEY_PREFIX}{key}"
            if isinstance(value, bool):
                writer.add_bool(name, value)
            elif value < 0:
                writer.add_int32(name, int(value))
            else:
                writer.add_uint32(name, int(value))
    if config.num_weight_layers != config.num_layers and arch != EDGECPM_GGUF_ARCH:
        # llama.cpp needs every blk.N (shared blocks are written again); edgecpm's loader reads which are one
        # (each block names the first block holding its weights: blk.N of a stepped model need not exist)
        first: dict[int, int] = {}
        writer.add_array(
            f"{arch}.{SHARED_LAYERS_KEY}",
            [first.setdefault(spec.weight_layer, i) for i, spec in enumerate(config.layers)],
        )
    writer.add_file_type(int(s.file_type))
    writer.add_quantization_version(GGML_QUANT_VERSION)


def _tensor_bytes(t: TensorPlan, config: ModelConfig, source: Any, regroup: dict | None = None) -> np.ndarray:
    if t.hf_name is None:
        rs = config.rope_scaling
        assert rs is not None
        factors = rs.short_factor if t.gguf_name == "rope_factors_short.weight" else rs.long_factor
        return np.asarray(factors, dtype=np.float32).view(np.uint8)
    w = source.get(t.hf_name)
    if t.permute_heads:
        w = _permute_rows(w, t.permute_heads)
    return quantize_tensor(
        w, t.qtype, t.gguf_name, ternary=t.ternary, regroup=regroup is not None and t.ternary, stats=regroup
    )


def _permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF half-split rotary rows -> llama.cpp interleaved pairs (same as `permute_for_llamacpp`, in torch)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _tensor_types(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return dict(Counter(t.tensor_type.name for t in reader.tensors))
