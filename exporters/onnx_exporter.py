"""`edgecpm export SRC --format onnx`: a KV-cache decoder graph that onnxruntime and ONNX Runtime GenAI run.

Artifact folder: `model.onnx` + `model.onnx.data` (weights, external), `genai_config.json`, `tokenizer.json` +
`tokenizer_config.json`, `edgecpm.json`. Weights stream from the source one tensor at a time straight into the
external data file. The export shell (`exporters.shell`) checks the model against the format table, stages the
folder and installs it atomically (removed on any failure, Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecpm.errors import EdgecpmError
from edgecpm.exporters.artifact import Artifact
from edgecpm.exporters.manifest import write_json_atomic
from edgecpm.exporters.onnx_decoder import MS, QUANT_BITS, SPARSE_DOMAIN, DecoderGraph, OnnxOptions, rope_caches
from edgecpm.exporters.onnx_genai import genai_config
from edgecpm.exporters.onnx_graph import GraphBuilder, save_model
from edgecpm.exporters.onnx_quant import check_block_size
from edgecpm.exporters.registry import Option, run_export
from edgecpm.exporters.shell import ExportJob, Written
from edgecpm.progress import progress_bar

QUANTS = tuple(QUANT_BITS)
SUPPORTED_OPSETS = range(18, 24)  # ai.onnx; the InfLLM v2 function body is traced at the same opset
MODEL_FILE, DATA_FILE = "model.onnx", "model.onnx.data"


def _block_size(v: Any) -> str | None:
    try:
        check_block_size(v)
    except EdgecpmError as exc:
        return str(exc)
    return None


def _one_of(name: str, allowed: tuple[Any, ...]) -> Any:
    return lambda v: None if v in allowed else f"{name} {v} is invalid; expected {' or '.join(map(str, allowed))}"


OPTIONS: dict[str, Option] = {
    # int4/int8 group size along K, a power of two >= 16 (K need not be a multiple)
    "block_size": Option(32, _block_size),
    # MatMulNBits: 0 = fp32 activations, 4 = int8 activations (faster on CPU)
    "accuracy_level": Option(
        4, lambda v: None if v in (0, 1, 2, 3, 4) else f"accuracy_level {v} is invalid; expected 0..4"
    ),
    # None = 8 for int4/int8, as llama.cpp keeps the output matrix at >= 6 bits
    "lm_head_bits": Option(None, _one_of("lm_head_bits", (None, 4, 8))),
    "opset": Option(
        21,
        lambda v: (
            None
            if v in SUPPORTED_OPSETS
            else (f"ONNX opset {v} is not supported; expected {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
        ),
    ),
    "sparse": Option(True, _one_of("sparse", (True, False))),  # False: InfLLM v2 layers as dense attention
    "max_length": Option(None),  # written to genai_config.json
    "genai_threads": Option(None),  # written to genai_config.json
}


def export(src: Any, out: Any, quant: str | None = None, progress: bool = True, **options: Any) -> Artifact:
    """Export `src` (HF checkpoint dir or .gguf) to an ONNX artifact folder `out` (options: `OPTIONS`;
    `threads` is accepted for the generic CLI and unused: quantization is vectorized numpy)."""
    return run_export(src, "onnx", out, quant, progress, **options)


def prepare(job: ExportJob) -> tuple[OnnxOptions, bool]:
    o = job.options
    opts = OnnxOptions(
        quant=job.quant,
        block_size=o["block_size"],
        accuracy_level=o["accuracy_level"],
        lm_head_bits=o["lm_head_bits"],
        opset=o["opset"],
    )
    return opts, bool(o["sparse"] and job.config.has_sparse_layers)


def write(job: ExportJob, prepared: tuple[OnnxOptions, bool], tmp: Path) -> Written:
    """`model.onnx` + `model.onnx.data`, genai_config.json and the tokenizer files, into `tmp`."""
    from edgecpm.exporters.onnx_tokenizer import write_tokenizer_files

    opts, use_sparse = prepared
    config, source = job.config, job.source

    def get(name: str) -> np.ndarray:
        return source.get(name).float().numpy()

    functions = []
    if use_sparse:
        from edgecpm.exporters.onnx_infllmv2 import sparse_function

        functions.append(
            sparse_function(config.sparse, config.num_heads, config.num_kv_heads, config.head_dim, opts.opset)
        )
    n_tensors = 2 + 4 * config.num_weight_layers + sum(1 for s in config.layers if s.output_gate)
    n_tensors += sum(1 for s in config.layers if s.attention == "lightning" and config.lightning.output_gate)
    with (
        progress_bar(total=n_tensors, desc=f"onnx {opts.quant}", enabled=job.progress) as bar,
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
            max_length=job.options["max_length"],
            threads=job.options["genai_threads"],
            model_file=MODEL_FILE,
        ),
    )
    tok_files = write_tokenizer_files(job.src, config, tmp)
    return Written(
        [MODEL_FILE, DATA_FILE],
        tok_files,
        dict(
            opset=opts.opset,
            block_size=opts.block_size,
            accuracy_level=opts.accuracy_level,
            lm_head_bits=opts.linear_bits(True),
            sparse_op=use_sparse,
            genai_config="genai_config.json",
            context_length=context,
        ),
    )
