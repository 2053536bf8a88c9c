"""edgecpm: take a MiniCPM4-family model to a device.

import edgecpm
m = edgecpm.load("path/to/MiniCPM4-0.5B")      # HF dir, .gguf, exported artifact, or None for the default
print(m.generate("Hello", max_new_tokens=32))
"""

from __future__ import annotations

from typing import Any

from edgecpm.api import LoadedModel, load  # noqa: E402
from edgecpm.config import ModelConfig, load_hf_config, preset_config  # noqa: E402
from edgecpm.errors import EdgecpmError  # noqa: E402
from edgecpm.version import __version__  # noqa: E402

__all__ = [
    "load",
    "export",
    "plan",
    "profile",
    "LoadedModel",
    "ModelConfig",
    "EdgecpmError",
    "load_hf_config",
    "preset_config",
    "__version__",
]


def export(src: Any, format: str, out: Any, quant: str | None = None, **options: Any) -> Any:
    """Export a checkpoint to `format` ("gguf", "onnx", "executorch"); returns the `Artifact`."""
    from edgecpm.exporters.registry import run_export

    return run_export(src, format, out, quant=quant, **options)


def plan(model: Any, device: str, **request: Any) -> Any:
    """Plan format, quantization, kernels and draft for a model on a device (pure function)."""
    from edgecpm.planning.planner import plan as _plan

    return _plan(model, device, **request)


def profile(model: Any, device: str = "host", out: Any = None, **options: Any) -> Any:
    """Measure a model on this host and write the profiling report."""
    from edgecpm.profiling.profiler import profile as _profile

    return _profile(model, device=device, out=out, **options)
