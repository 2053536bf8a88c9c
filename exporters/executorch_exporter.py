"""ExecuTorch exporter: a checkpoint -> an artifact folder the ExecuTorch runtime and its LLM runner run.

    model.pte         forward(tokens[1,S] int64, input_pos[1] int64) -> logits, KV cache in mutable buffers,
                      1 <= S <= max_seq_len (dynamic prefill), XNNPACK-delegated, runner metadata methods
    tokenizer.model | tokenizer.json   (the file ExecuTorch's runner loads) + tokenizer_config.json
    edgecpm.json      the manifest `edgecpm.load` reads

Stages: open the checkpoint -> reference `Model` -> `ETDecoder` (same math, export layout) -> torchao
quantization -> lowering (`executorch_lower`) -> files written into the staging folder of the export shell
(`exporters.shell`), which checks the model against the format table and installs the folder atomically.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from edgecpm.config import ModelConfig
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.artifact import Artifact
from edgecpm.exporters.executorch_quant import QUANTS, QuantReport, quantize_module
from edgecpm.exporters.registry import Option, run_export
from edgecpm.exporters.shell import ExportJob, Written
from edgecpm.progress import progress_bar

__all__ = ["QUANTS", "OPTIONS", "export", "prepare", "write", "build_module", "runner_metadata", "PTE_NAME"]

PTE_NAME = MODEL_FILE = "model.pte"
DEFAULT_MAX_SEQ_LEN = 128
DEFAULT_MAX_CONTEXT_LEN = 1024
SPARSE_CONTEXT_FACTOR = 2  # sparse checkpoints: default context 2 x dense_len, so sparse attention runs


def default_context_len(config: ModelConfig) -> int:
    """max_context_len when none is given: 1024, or for a checkpoint with InfLLM v2 layers 2 x dense_len
    (16384 for the published sparse_config), so a default export really contains sparse attention; capped
    by max_position_embeddings."""
    ctx = DEFAULT_MAX_CONTEXT_LEN
    sc = config.sparse
    if config.has_sparse_layers and sc is not None and sc.dense_len > 0:
        ctx = max(ctx, SPARSE_CONTEXT_FACTOR * sc.dense_len)
    return min(config.max_position_embeddings, ctx)


def runner_metadata(config: ModelConfig, max_seq_len: int, max_context_len: int) -> dict[str, Any]:
    """The constant methods ExecuTorch's LLM runner reads (get_max_seq_len = the exported length bound)."""
    meta: dict[str, Any] = {
        "get_max_seq_len": max_seq_len,
        "get_max_context_len": max_context_len,
        "get_vocab_size": config.vocab_size,
        "get_n_layers": config.num_layers,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
        "get_eos_ids": list(config.eos_token_ids),
    }
    if config.bos_token_id is not None:
        meta["get_bos_id"] = config.bos_token_id
    return meta


def _positive_int(name: str) -> Any:
    return lambda v: (
        None
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1
        else (f"{name} is {v!r}; expected a positive integer")
    )


OPTIONS: dict[str, Option] = {
    "max_seq_len": Option(DEFAULT_MAX_SEQ_LEN, _positive_int("max_seq_len")),  # longest prefill chunk
    "max_context_len": Option(None),  # KV cache length; None: `default_context_len` (2 x dense_len if sparse)
    "group_size": Option(
        32,
        lambda v: (
            None
            if isinstance(v, int) and v >= 0
            else (f"group size {v}; expected 0 (per channel) or a positive integer")
        ),
    ),
    "embedding_bits": Option(None, lambda v: None if v in (None, 4, 8) else f"embedding bits {v}; expected 4 or 8"),
    "all_logits": Option(False),  # forward returns logits for every position, not only the last
    "hqq": Option(True),  # torchao's HQQ scale search for int4 weights
    # InfLLM v2 past dense_len: "decompose" (portable: the stock runtime and Android library run it) or
    # "compiled" (the C++ kernel library, which the runtime must load; edgecpm's backend builds and loads it)
    "sparse_kernel": Option(
        "decompose",
        lambda v: (
            None
            if v in ("decompose", "compiled")
            else (f"sparse kernel mode {v!r}; expected 'decompose' or 'compiled'")
        ),
    ),
}


def export(
    src: str | Path, out: str | Path, quant: str | None = None, progress: bool = True, **options: Any
) -> Artifact:
    """Export `src` (HF checkpoint dir or .gguf) to an ExecuTorch artifact folder `out` (options: `OPTIONS`)."""
    return run_export(src, "executorch", out, quant, progress, **options)


def prepare(job: ExportJob) -> tuple[int, str]:
    """The context length of the program and how its InfLLM v2 layers run (dense / sparse / switch)."""
    from edgecpm.exporters.executorch_module import sparse_mode

    config, o = job.config, job.options
    if o["threads"]:
        torch.set_num_threads(int(o["threads"]))
    ctx = o["max_context_len"] or default_context_len(config)
    _check_lengths(config, o["max_seq_len"], ctx)
    attn_mode = sparse_mode(config.sparse, ctx) if config.has_sparse_layers else "dense"
    if attn_mode != "dense":
        _require_sparse_op()
        if o["sparse_kernel"] == "compiled":  # the program is useless without the library: fail before export
            from edgecpm.runtime_kernels.infllmv2_executorch import build

            build()
    return ctx, attn_mode


def write(job: ExportJob, prepared: tuple[int, str], tmp: Path) -> Written:
    """`model.pte` and the runner's tokenizer files, into `tmp`."""
    from edgecpm.exporters.executorch_lower import lower_to_pte
    from edgecpm.exporters.executorch_tokenizer import write_runner_tokenizer

    ctx, attn_mode = prepared
    config, source, quant, o = job.config, job.source, job.quant, job.options
    with progress_bar(total=5, desc="executorch export", enabled=job.progress) as bar:
        tok_files = write_runner_tokenizer(
            job.src, config, tmp, getattr(source, "reader", None) if job.src.suffix == ".gguf" else None
        )
        bar.set_postfix_str("loading weights + quantizing")
        module, report = build_module(
            config,
            source,
            ctx,
            quant,
            group_size=o["group_size"],
            embedding_bits=o["embedding_bits"],
            hqq=o["hqq"],
            all_logits=o["all_logits"],
            max_seq_len=o["max_seq_len"],
            sparse_kernel=o["sparse_kernel"],
        )
        bar.update(2)
        bar.set_postfix_str("export + lower (XNNPACK)")
        buffer = lower_to_pte(
            module,
            o["max_seq_len"],
            runner_metadata(config, o["max_seq_len"], ctx),
            quantized=quant != "fp32",
            has_sparse=attn_mode != "dense",
            sparse_mode=o["sparse_kernel"],
        )
        bar.update(2)
        (tmp / PTE_NAME).write_bytes(buffer)
        bar.update(1)
    return Written(
        [PTE_NAME],
        tok_files,
        dict(
            max_seq_len=o["max_seq_len"],
            max_context_len=ctx,
            logits="all" if o["all_logits"] else "last",
            quantization=asdict(report),
            sparse_attention=attn_mode if config.has_sparse_layers else None,
            sparse_kernel=o["sparse_kernel"] if attn_mode != "dense" else None,
            sparse_state="compressed_keys" if attn_mode != "dense" else None,
            sparse_from=(config.sparse.dense_len if attn_mode == "switch" else 0) if attn_mode != "dense" else None,
            pte_bytes=len(buffer),
        ),
    )


def build_module(
    config: ModelConfig,
    source: Any,
    max_context_len: int,
    quant: str = "fp32",
    *,
    group_size: int = 32,
    embedding_bits: int | None = None,
    hqq: bool = True,
    all_logits: bool = False,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    sparse_kernel: str = "decompose",
) -> tuple[torch.nn.Module, QuantReport]:
    """The eager module that gets lowered (also what tests run in torch to check the program against)."""
    from edgecpm.exporters.executorch_module import ETDecoder
    from edgecpm.model import Model

    model = Model.from_source(config, source, torch.float32)
    module = ETDecoder(
        model, max_context_len, all_logits=all_logits, max_seq_len=max_seq_len, sparse_kernel=sparse_kernel
    ).eval()
    del model
    report = quantize_module(module, quant, group_size, embedding_bits, hqq=hqq)
    return module, report


def _check_lengths(config: ModelConfig, max_seq_len: int, ctx: int) -> None:
    if not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise EdgecpmError(f"max_seq_len is {max_seq_len!r}; expected a positive integer")
    if not isinstance(ctx, int) or ctx < max_seq_len:
        raise EdgecpmError(f"max_context_len is {ctx!r}; expected an integer >= max_seq_len ({max_seq_len})")
    if ctx > config.max_position_embeddings:
        raise EdgecpmError(
            f"max_context_len {ctx} exceeds the model's max_position_embeddings ({config.max_position_embeddings})"
        )


def _require_sparse_op() -> None:
    try:
        from edgecpm import runtime_kernels

        runtime_kernels.infllmv2_decomposition  # noqa: B018
        torch.ops.edgecpm.infllmv2_attention  # noqa: B018
    except (ImportError, AttributeError, RuntimeError):
        raise EdgecpmError(
            "this checkpoint has InfLLM v2 sparse layers but edgecpm.runtime_kernels does not "
            "provide the infllmv2_attention op yet"
        ) from None
