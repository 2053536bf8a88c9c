"""Variants of one model to compare: a backend, InfLLM v2 sparse attention at a budget, or an exported quant.

Spec grammar (`LABEL=SPEC`, LABEL optional):
  `llama.cpp` | `torch` | `onnxruntime` | `executorch`   the model as is, on that backend
  `sparse:topk=K,window=W[,block=B,kernel=S,stride=R,init=I]`   torch backend with InfLLM v2 switched on in every
                                                          softmax layer (always sparse: dense_len=-1)
  `FORMAT:QUANT[@BACKEND]`  e.g. `gguf:q4_0`, `gguf:f32`, `onnx:int4`   exported once into the work folder
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecpm.errors import EdgecpmError

BACKENDS = ("torch", "llama.cpp", "onnxruntime", "executorch")
EXPORT_FORMATS = ("gguf", "onnx", "executorch")
_SPARSE_KEYS = {
    "topk": "topk",
    "window": "window_size",
    "block": "block_size",
    "kernel": "kernel_size",
    "stride": "kernel_stride",
    "init": "init_blocks",
}


@dataclass(frozen=True)
class Variant:
    label: str
    spec: str
    backend: str
    sparse: dict[str, int] = field(default_factory=dict)
    fmt: str | None = None
    quant: str | None = None

    @property
    def kind(self) -> str:
        return "sparse" if self.sparse else "export" if self.fmt else "backend"


def parse_variant(text: str) -> Variant:
    head, sep, tail = text.partition("=")
    named = sep and tail and ":" not in head and "," not in head  # "k4=sparse:topk=4" vs "sparse:topk=4"
    label, spec = (head, tail) if named else ("", text)
    spec = spec.strip()
    label = label.strip() or spec
    if spec in BACKENDS:
        return Variant(label, spec, spec)
    if spec.startswith("sparse:"):
        values: dict[str, int] = {}
        for part in filter(None, spec[len("sparse:") :].split(",")):
            key, _, val = part.partition("=")
            if key not in _SPARSE_KEYS or not val.lstrip("-").isdigit():
                raise EdgecpmError(f"variant {text!r}: expected sparse:topk=K,window=W[,block,kernel,stride,init]")
            values[_SPARSE_KEYS[key]] = int(val)
        if "topk" not in values:
            raise EdgecpmError(f"variant {text!r}: a sparse variant needs topk=K")
        return Variant(label, spec, "torch", sparse=values)
    fmt, _, rest = spec.partition(":")
    quant, _, backend = rest.partition("@")
    if fmt in EXPORT_FORMATS and quant:
        from edgecpm.exporters.manifest import FORMAT_BACKENDS

        return Variant(label, spec, backend or FORMAT_BACKENDS[fmt], fmt=fmt, quant=quant)
    raise EdgecpmError(
        f"unknown variant {text!r}; expected a backend ({', '.join(BACKENDS)}), "
        "sparse:topk=K,window=W, or FORMAT:QUANT (gguf:q4_0, onnx:int4, executorch:8da4w)"
    )


def sparse_config(values: dict[str, int]) -> Any:
    from edgecpm.config import SparseConfig

    sp = SparseConfig(**{**values, "dense_len": -1})
    if sp.block_size % sp.kernel_stride or sp.window_size % sp.block_size or sp.topk < 1 or sp.window_size < 0:
        raise EdgecpmError(
            f"sparse settings {values}: block must be a multiple of stride, window a multiple of block, topk >= 1"
        )
    return sp


def _gguf_file(path: Path) -> Path:
    from edgecpm.exporters.manifest import is_artifact, read_manifest

    if path.is_dir() and is_artifact(path):
        m = read_manifest(path)
        if m.format == "gguf":
            return path / m.model_files[0]
    return path


def load_sparse(path: Path, values: dict[str, int], threads: int | None = None) -> Any:
    """The torch reference model with InfLLM v2 on every softmax layer, for a checkpoint or GGUF without a
    `sparse_config` of its own (or to override it)."""
    import torch

    from edgecpm.api import LoadedModel
    from edgecpm.backends.torch_backend import TorchBackend
    from edgecpm.model import Model
    from edgecpm.weights import open_checkpoint

    p = _gguf_file(path)
    config, source = open_checkpoint(p)
    config = config.with_sparse(sparse_config(values))
    if p.suffix == ".gguf":
        from edgecpm.gguf_vocab import tokenizer_from_gguf

        tokenizer, fmt = tokenizer_from_gguf(source.reader, config.eos_token_ids), "gguf"
    else:
        from edgecpm.tokenizer import load_tokenizer_dir

        tokenizer = load_tokenizer_dir(p, bos_id=config.bos_token_id, eos_ids=config.eos_token_ids)
        fmt = "hf"
    backend = TorchBackend(Model.from_source(config, source, torch.float32), threads=threads)
    return LoadedModel(p, config, tokenizer, backend, fmt)


def open_variant(
    model_path: str | Path | None,
    variant: Variant,
    work: Path,
    n_ctx: int,
    threads: int | None = None,
    progress: bool = False,
) -> Any:
    """Load (exporting first if needed) one variant; llama.cpp gets a context of n_ctx tokens."""
    import edgecpm
    from edgecpm.default_model import resolve_model_path

    src = resolve_model_path(model_path)
    if variant.sparse:
        return load_sparse(src, variant.sparse, threads)
    path: Path = src
    if variant.fmt:
        from edgecpm.exporters.manifest import is_artifact, read_manifest

        path = work / "variants" / f"{variant.fmt}-{variant.quant}"
        if not (path.is_dir() and is_artifact(path) and read_manifest(path).quant == variant.quant):
            path.parent.mkdir(parents=True, exist_ok=True)
            path = Path(
                edgecpm.export(str(src), format=variant.fmt, quant=variant.quant, out=str(path), progress=progress).path
            )
    options: dict[str, Any] = {"n_ctx": n_ctx} if variant.backend == "llama.cpp" else {}
    return edgecpm.load(path, backend=variant.backend, threads=threads, **options)
