"""Format name -> exporter module. Each exporter module defines
`export(src, out, quant=None, progress=True, **options) -> Artifact` and `QUANTS` (the accepted quant names)."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import EdgecpmError

EXPORTERS = {
    "gguf": "edgecpm.exporters.gguf_exporter",
    "onnx": "edgecpm.exporters.onnx_exporter",
    "executorch": "edgecpm.exporters.executorch_exporter",
}


def exporter_module(fmt: str) -> Any:
    if fmt not in EXPORTERS:
        raise EdgecpmError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORTERS)}")
    try:
        return importlib.import_module(EXPORTERS[fmt])
    except ModuleNotFoundError as exc:
        raise EdgecpmError(f"the {fmt} exporter needs {exc.name!r}, which is not installed") from None


def run_export(src: Any, fmt: str, out: Any, quant: str | None = None, **options: Any) -> Any:
    module = exporter_module(fmt)
    if quant is not None and quant not in module.QUANTS:
        raise EdgecpmError(f"unknown quant {quant!r} for {fmt}; expected one of {', '.join(module.QUANTS)}")
    return module.export(src, out, quant=quant, **options)
