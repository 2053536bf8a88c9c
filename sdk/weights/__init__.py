"""Lazy name -> tensor access in canonical Hugging Face names (`WeightSource`).

Exporters and the reference model stream from a source one tensor at a time, so nothing ever holds a whole
model twice. Sources: safetensors (single or sharded, read through short-lived memory maps), GGUF
(dequantized with `gguf.quants`) and plain memory.
"""

from __future__ import annotations

from pathlib import Path

from edgecpm.config import ModelConfig, load_hf_config
from edgecpm.errors import EdgecpmError
from edgecpm.weights.base import MemorySource, WeightSource
from edgecpm.weights.gguf_source import GGUFSource
from edgecpm.weights.safetensors_source import SafetensorsSource

__all__ = ["WeightSource", "SafetensorsSource", "GGUFSource", "MemorySource", "open_checkpoint"]


def open_checkpoint(path: str | Path, ode_steps: int | None = None) -> tuple[ModelConfig, WeightSource]:
    """Config and weights of a HF checkpoint directory or a `.gguf` file.

    `ode_steps` integrates a shared-layer model's shared runs in N steps (`ModelConfig.with_ode_steps`); the
    source still serves the stored tensors once each.
    """
    p = Path(path)
    if not p.exists():
        raise EdgecpmError(f"checkpoint not found: {p}")
    if p.is_file() and p.suffix == ".gguf":
        source = GGUFSource(p)
        return source.config.with_ode_steps(ode_steps), source
    if p.is_dir():
        source = SafetensorsSource.from_dir(p)
        config = load_hf_config(p, has_lm_head="lm_head.weight" in source)
        source.check_against(config)
        return config.with_ode_steps(ode_steps), source
    raise EdgecpmError(f"{p} is neither a checkpoint directory nor a .gguf file")
