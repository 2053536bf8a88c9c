"""The one table of backends: name -> the module that opens it and the runtime it needs.

`open_backend(name, path, config, manifest, **options)` imports the backend's module on first use and returns
an `Opened` (the backend, plus the tokenizer when the artifact carries its own, e.g. a GGUF vocabulary).
Backend modules know nothing of this table, so there is no import circle between them and the registry.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from edgecpm.backends.base import Backend
from edgecpm.errors import EdgecpmError
from edgecpm.optional import missing_dependency


@dataclass(frozen=True)
class BackendEntry:
    module: str  # defines `open_backend(path, config, manifest, **options) -> Opened`
    runtime: str | None  # the Python module of the runtime it drives (None: torch, always installed)


BACKENDS: dict[str, BackendEntry] = {
    "torch": BackendEntry("edgecpm.backends.torch_backend", None),
    "llama.cpp": BackendEntry("edgecpm.backends.llamacpp_backend", "llama_cpp"),
    "onnxruntime": BackendEntry("edgecpm.backends.onnx_backend", "onnxruntime"),
    "executorch": BackendEntry("edgecpm.backends.executorch_backend", "executorch"),
}


@dataclass
class Opened:
    """What every backend factory returns: the decoding backend and, if the artifact has one, its tokenizer."""

    backend: Backend
    tokenizer: Any = None


def is_installed(name: str) -> bool:
    entry = BACKENDS[name]
    return entry.runtime is None or importlib.util.find_spec(entry.runtime) is not None


def available_backends() -> list[str]:
    """The backends whose runtime is installed here."""
    return sorted(name for name in BACKENDS if is_installed(name))


def open_backend(name: str, path: Any, config: Any, manifest: Any = None, **options: Any) -> Opened:
    """Open `path` on backend `name`; one-line errors for unknown names and missing runtimes."""
    if name not in BACKENDS:
        raise EdgecpmError(f"unknown backend {name!r}; expected one of {', '.join(sorted(BACKENDS))}")
    entry = BACKENDS[name]
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as exc:
        raise missing_dependency(exc, f"the {name} backend") from None
    return module.open_backend(path, config, manifest, **options)
