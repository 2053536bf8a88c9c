"""ExecuTorch's kernel libraries, which both the runtime backend and the exporter must load first."""

from __future__ import annotations

from edgecpm.errors import EdgecpmError


def import_runtime_ops(sparse_kernel: str | None = None) -> None:
    """The AOT + runtime kernels of `llama::*` (KV cache, SDPA) and `quantized_decomposed::*` (embeddings);
    for a program exported with `sparse_kernel="compiled"` also edgecpm's InfLLM v2 kernel library (built on
    first use), without which the program fails to load with a missing `edgecpm::infllmv2_sparse_cache.out`."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    import executorch.kernels.quantized  # noqa: F401

    if sparse_kernel in (None, "decompose"):
        return
    if sparse_kernel != "compiled":
        raise EdgecpmError(
            f"this ExecuTorch program needs sparse kernel {sparse_kernel!r}, which edgecpm does not know"
        )
    from edgecpm.runtime_kernels.infllmv2_executorch import load_executorch_kernels

    load_executorch_kernels()
