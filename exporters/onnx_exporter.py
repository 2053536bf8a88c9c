"""`edgecpm export SRC --format onnx`: a KV-cache decoder graph that onnxruntime and ONNX Runtime GenAI run.

Artifact folder: `model.onnx` + `model.onnx.data` (weights, external), `genai_config.json`, `tokenizer.json` +
`tokenizer_config.json`, `edgecpm.json`. Weights stream from the source one tensor at a time straight into the
external data file. Everything is written into a hidden temporary folder that is renamed into place when
complete, and removed on any failure (including Ctrl-C).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..errors import EdgecpmError
from ..progress import progress_bar
from .manifest import Manifest, make_manifest, source_checksum, write_json_atomic
from .onnx_decoder import MS, QUANT_BITS, SPARSE_DOMAIN, DecoderGraph, OnnxOptions, rope_caches
from .onnx_genai import genai_config
from .onnx_graph import GraphBuilder, save_model
from .onnx_quant import check_block_size

QUANTS = tuple(QUANT_BITS)
SUPPORTED_OPSETS = range(18, 24)  # ai.onnx; the InfLLM v2 function body is traced at the same opset
MODEL_FILE, DATA_FILE = "model.onnx", "model.onnx.data"


@dataclass(frozen=True)
class Artifact:
    """What an export produced: the artifact folder, its graph file and its manifest."""

    path: Path
    model_file: Path
    manifest: Manifest


def export(
    src: Any,
    out: Any,
    quant: str | None = None,
    progress: bool = True,
    *,
    block_size: int = 32,
    accuracy_level: int = 4,
    lm_head_bits: int | None = None,
    opset: int = 21,
    sparse: bool = True,
    max_length: int | None = None,
    threads: int | None = None,
    genai_threads: int | None = None,
    overwrite: bool = False,
    ode_steps: int | None = None,
    **options: Any,
) -> Artifact:
    """Export `src` (HF checkpoint dir or .gguf) to an ONNX artifact folder `out`.

    Options: `block_size` (int4/int8 group size along K, a power of two >= 16; K need not be a multiple),
    `accuracy_level` (MatMulNBits: 0 = fp32 activations, 4 = int8 activations, faster on CPU), `lm_head_bits`
    (4 or 8; default 8 for int4/int8, as llama.cpp keeps the output matrix at >= 6 bits), `opset` (ai.onnx,
    18..23), `sparse=False` (export InfLLM v2 layers as dense attention), `max_length` and `genai_threads`
    (written to genai_config.json), `overwrite`. `threads` is accepted for the generic CLI and unused
    (quantization is vectorized numpy).
    """
    from ..weights import open_checkpoint

    if options:
        raise EdgecpmError(f"unknown ONNX export option(s): {', '.join(sorted(options))}")
    quant = quant or "fp32"
    if quant not in QUANTS:
        raise EdgecpmError(f"unknown quant {quant!r} for onnx; expected one of {', '.join(QUANTS)}")
    if opset not in SUPPORTED_OPSETS:
        raise EdgecpmError(
            f"ONNX opset {opset} is not supported; expected {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
        )
    check_block_size(block_size)
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise EdgecpmError(f"accuracy_level {accuracy_level} is invalid; expected 0..4")
    if lm_head_bits not in (None, 4, 8):
        raise EdgecpmError(f"lm_head_bits {lm_head_bits} is invalid; expected 4 or 8")
    opts = OnnxOptions(
        quant=quant,
        block_size=block_size,
        accuracy_level=accuracy_level,
        lm_head_bits=lm_head_bits,
        opset=opset,
    )
    src_path = Path(src)
    if not src_path.exists():
        raise EdgecpmError(f"source checkpoint not found: {src_path}")
    out_path = Path(out)
    if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())) and not overwrite:
        raise EdgecpmError(f"output {out_path} already exists and is not empty; remove it or pass overwrite")
    config, source = open_checkpoint(src_path, ode_steps=ode_steps)
    use_sparse = bool(sparse and config.has_sparse_layers)
    if use_sparse and config.sparse.use_nope and any(s.use_rope for s in config.layers if s.attention == "infllmv2"):
        raise EdgecpmError(
            "sparse_config.use_nope (block selection on pre-RoPE keys) is not supported by the ONNX "
            "exporter; export with sparse=False (dense attention) instead"
        )

    parent = out_path.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{out_path.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise EdgecpmError(f"cannot write the ONNX artifact to {out_path}: {exc.strerror or exc}") from None
    try:
        manifest = _write_artifact(tmp, src_path, config, source, opts, use_sparse, max_length, genai_threads, progress)
        if out_path.exists():
            shutil.rmtree(out_path) if out_path.is_dir() else out_path.unlink()
        os.replace(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(out_path, out_path / MODEL_FILE, manifest)


def _write_artifact(
    tmp: Path,
    src_path: Path,
    config: ModelConfig,
    source: Any,
    opts: OnnxOptions,
    use_sparse: bool,
    max_length: int | None,
    threads: int | None,
    progress: bool,
) -> Any:
    from .onnx_tokenizer import write_tokenizer_files

    def get(name: str) -> np.ndarray:
        return source.get(name).float().numpy()

    functions = []
    if use_sparse:
        from .onnx_infllmv2 import sparse_function

        functions.append(
            sparse_function(config.sparse, config.num_heads, config.num_kv_heads, config.head_dim, opts.opset)
        )
    n_tensors = 2 + 4 * config.num_weight_layers + sum(1 for s in config.layers if s.output_gate)
    with (
        progress_bar(total=n_tensors, desc=f"onnx {opts.quant}", enabled=progress) as bar,
        open(tmp / DATA_FILE, "wb") as data,
    ):
        g = GraphBuilder(data, DATA_FILE)
        graph = DecoderGraph(g, config, get, opts, use_sparse, tick=lambda: bar.update(1))
        graph.build()
        opsets = {"": opts.opset, MS: 1}
        if use_sparse:
            opsets[SPARSE_DOMAIN] = 1
        model = g.model(opsets, functions)
    save_model(model, tmp / MODEL_FILE)
    _, _, context = rope_caches(config)
    write_json_atomic(
        tmp / "genai_config.json",
        genai_config(
            config,
            context,
            share_buffer=graph.all_gqa,
            max_length=max_length,
            threads=threads,
            model_file=MODEL_FILE,
        ),
    )
    tok_files = write_tokenizer_files(src_path, config, tmp)
    files = [p for p in src_path.iterdir() if p.is_file()] if src_path.is_dir() else [src_path]
    checksum = source_checksum([p for p in files if p.suffix in (".safetensors", ".gguf", ".bin")] or files)
    manifest = make_manifest(
        "onnx",
        opts.quant,
        config,
        [MODEL_FILE, DATA_FILE],
        checksum,
        tok_files,
        opset=opts.opset,
        block_size=opts.block_size,
        accuracy_level=opts.accuracy_level,
        lm_head_bits=opts.linear_bits(True),
        sparse_op=use_sparse,
        genai_config="genai_config.json",
        context_length=context,
    )
    manifest.write(tmp)
    return manifest
