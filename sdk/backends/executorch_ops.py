"""ExecuTorch's kernel libraries, which both the runtime backend and the exporter must load first."""

from __future__ import annotations


def import_runtime_ops() -> None:
    """The AOT + runtime kernels of `llama::*` (KV cache, SDPA) and `quantized_decomposed::*` (embeddings)."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    import executorch.kernels.quantized  # noqa: F401
