"""ExecuTorch exporter: a checkpoint -> an artifact folder the ExecuTorch runtime and its LLM runner run.

    model.pte         forward(tokens[1,S] int64, input_pos[1] int64) -> logits, KV cache in mutable buffers,
                      1 <= S <= max_seq_len (dynamic prefill), XNNPACK-delegated, runner metadata methods
    tokenizer.model | tokenizer.json   (the file ExecuTorch's runner loads) + tokenizer_config.json
    edgecpm.json      the manifest `edgecpm.load` reads

Stages: open the checkpoint -> reference `Model` -> `ETDecoder` (same math, export layout) -> torchao
quantization -> lowering (`executorch_lower`) -> files written into a temporary folder, renamed when complete.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import EdgecpmError
from ..progress import progress_bar
from .executorch_quant import QUANTS, QuantReport, quantize_module
from .manifest import Manifest, install_folder, is_artifact, make_manifest, source_checksum

__all__ = ["QUANTS", "export", "build_module", "runner_metadata", "PTE_NAME"]

PTE_NAME = "model.pte"
DEFAULT_MAX_SEQ_LEN = 128
DEFAULT_MAX_CONTEXT_LEN = 1024


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


def export(src: str | Path, out: str | Path, quant: str | None = None, progress: bool = True, *,
           max_seq_len: int = DEFAULT_MAX_SEQ_LEN, max_context_len: int | None = None, group_size: int = 32,
           embedding_bits: int | None = None, all_logits: bool = False, hqq: bool = True,
           sparse_kernel: str = "decompose", threads: int | None = None, ode_steps: int | None = None,
           **unknown: Any) -> Manifest:
    """Export `src` (HF checkpoint dir or .gguf) to an ExecuTorch artifact folder `out`."""
    if unknown:
        raise EdgecpmError(f"unknown ExecuTorch export option(s): {', '.join(sorted(unknown))}")
    quant = quant or "fp32"
    if threads:
        torch.set_num_threads(int(threads))
    if quant not in QUANTS:
        raise EdgecpmError(f"unknown quant {quant!r} for executorch; expected one of {', '.join(QUANTS)}")
    src_path, out_path = Path(src), Path(out)
    _check_out(out_path)

    from ..weights import open_checkpoint

    config, source = open_checkpoint(src_path, ode_steps=ode_steps)
    ctx = max_context_len or min(config.max_position_embeddings, DEFAULT_MAX_CONTEXT_LEN)
    _check_lengths(config, max_seq_len, ctx)
    if config.has_lightning_layers:
        raise EdgecpmError("the ExecuTorch exporter does not support lightning-attention (SALA) layers yet")
    from .executorch_module import sparse_mode

    attn_mode = sparse_mode(config.sparse, ctx) if config.has_sparse_layers else "dense"
    if attn_mode != "dense":
        _require_sparse_op()

    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with progress_bar(total=5, desc="executorch export", enabled=progress) as bar:
            from .executorch_lower import lower_to_pte
            from .executorch_tokenizer import write_runner_tokenizer

            tmp.mkdir(parents=True)
            tok_files = write_runner_tokenizer(src_path, config, tmp, getattr(source, "reader", None)
                                               if src_path.suffix == ".gguf" else None)
            bar.set_postfix_str("loading weights + quantizing")
            module, report = build_module(config, source, ctx, quant, group_size=group_size,
                                          embedding_bits=embedding_bits, hqq=hqq, all_logits=all_logits)
            bar.update(2)
            bar.set_postfix_str("export + lower (XNNPACK)")
            buffer = lower_to_pte(module, max_seq_len, runner_metadata(config, max_seq_len, ctx),
                                  quantized=quant != "fp32", has_sparse=attn_mode != "dense",
                                  sparse_mode=sparse_kernel)
            bar.update(2)
            (tmp / PTE_NAME).write_bytes(buffer)
            manifest = make_manifest(
                "executorch", quant, config, [PTE_NAME], source_checksum(_source_files(src_path)),
                tokenizer_files=tok_files, max_seq_len=max_seq_len, max_context_len=ctx,
                logits="all" if all_logits else "last", quantization=asdict(report),
                sparse_attention=attn_mode if config.has_sparse_layers else None,
                sparse_kernel=sparse_kernel if attn_mode != "dense" else None, pte_bytes=len(buffer))
            manifest.write(tmp)
            bar.update(1)
        install_folder(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def build_module(config: ModelConfig, source: Any, max_context_len: int, quant: str = "fp32", *,
                 group_size: int = 32, embedding_bits: int | None = None, hqq: bool = True,
                 all_logits: bool = False) -> tuple[torch.nn.Module, QuantReport]:
    """The eager module that gets lowered (also what tests run in torch to check the program against)."""
    from ..model import Model
    from .executorch_module import ETDecoder

    model = Model.from_source(config, source, torch.float32)
    module = ETDecoder(model, max_context_len, all_logits=all_logits).eval()
    del model
    report = quantize_module(module, quant, group_size, embedding_bits, hqq=hqq)
    return module, report


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise EdgecpmError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_artifact(out):
        raise EdgecpmError(f"output folder {out} is not empty and is not an edgecpm artifact; "
                           "refusing to replace it")


def _check_lengths(config: ModelConfig, max_seq_len: int, ctx: int) -> None:
    if not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise EdgecpmError(f"max_seq_len is {max_seq_len!r}; expected a positive integer")
    if not isinstance(ctx, int) or ctx < max_seq_len:
        raise EdgecpmError(f"max_context_len is {ctx!r}; expected an integer >= max_seq_len ({max_seq_len})")
    if ctx > config.max_position_embeddings:
        raise EdgecpmError(f"max_context_len {ctx} exceeds the model's max_position_embeddings "
                           f"({config.max_position_embeddings})")


def _require_sparse_op() -> None:
    try:
        from .. import runtime_kernels

        runtime_kernels.infllmv2_decomposition  # noqa: B018
        torch.ops.edgecpm.infllmv2_attention  # noqa: B018
    except (ImportError, AttributeError, RuntimeError):
        raise EdgecpmError("this checkpoint has InfLLM v2 sparse layers but edgecpm.runtime_kernels does not "
                           "provide the infllmv2_attention op yet") from None


def _source_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    return [p for p in src.iterdir() if p.suffix in (".safetensors", ".json")]
