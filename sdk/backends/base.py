"""The `Backend` protocol: the only thing the generator and speculative decoding see.

A backend holds one sequence's decoding state. `prefill` starts a new sequence, `decode` appends tokens (one,
or several to verify a speculative draft), `truncate` rolls back, `reset` forgets. Logits are float32 numpy.
Backends register a factory under a name; `edgecpm.load` picks one from the path and the artifact manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import EdgecpmError


@runtime_checkable
class Backend(Protocol):
    name: str
    vocab_size: int

    @property
    def n_past(self) -> int:
        """Tokens currently held in the decoding state."""
        ...

    def prefill(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Reset, evaluate `ids`; return the last position's logits `[V]`, or `[T, V]` with all_logits."""
        ...

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        """Append `ids` (one or more) to the state; return their logits `[len(ids), V]`."""
        ...

    def truncate(self, n: int) -> None:
        """Keep only the first n tokens of the state (speculative rollback)."""
        ...

    def reset(self) -> None: ...


BackendFactory = Callable[..., Any]
# backends that register only when their runtime is installed: name -> the module that runtime provides
OPTIONAL_BACKENDS = {"llama.cpp": "llama_cpp", "onnxruntime": "onnxruntime", "executorch": "executorch"}
_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """`factory(path, config, manifest, **options) -> (backend, tokenizer)`; later registrations override."""
    _REGISTRY[name] = factory


def resolve_backend(name: str) -> BackendFactory:
    from . import torch_backend  # noqa: F401  (registers "torch")

    _import_optional_backends()
    if name not in _REGISTRY:
        if name in OPTIONAL_BACKENDS:
            from edgecpm.optional import missing_dependency

            module = OPTIONAL_BACKENDS[name]
            raise missing_dependency(ModuleNotFoundError(name=module), f"the {name} backend")
        raise EdgecpmError(f"unknown backend {name!r}; expected one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available_backends() -> list[str]:
    resolve_backend("torch")
    return sorted(_REGISTRY)


def _import_optional_backends() -> None:
    """Backends that live beside their exporter register themselves on import, if installed."""
    import importlib

    for module in ("edgecpm.backends.llamacpp_backend", "edgecpm.backends.onnx_backend",
                   "edgecpm.backends.executorch_backend"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:  # the backend is not built yet or its runtime is not installed
            continue
