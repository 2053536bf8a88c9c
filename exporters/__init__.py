"""Exporters: one module per format (GGUF, ONNX, ExecuTorch), the shared quantization schemes and the
artifact manifest (`edgecpm.json`) that `edgecpm.load` reads back."""

from __future__ import annotations
