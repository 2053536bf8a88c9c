"""The executorch backend: an exported `.pte` run through `executorch.runtime`, behind the `Backend` protocol.

The KV cache lives in the loaded method's mutable buffers, so the decoding state is the method itself plus
the position `n_past`. `truncate(n)` only moves the position back: the next call writes from position n and
attention never reads past the current position, so stale entries are never seen (what ExecuTorch's runner
does on reset). The kernel libraries a `.pte` may call outside XNNPACK (`llama::*` cache/SDPA ops,
`quantized_decomposed::*` embeddings, and for `sparse_kernel: "compiled"` in the manifest edgecpm's InfLLM v2
kernel library, built on first use) are loaded before the program, or loading fails with OperatorMissing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecpm.backends.registry import Opened
from edgecpm.errors import EdgecpmError


class ExecuTorchBackend:
    name = "executorch"

    def __init__(
        self,
        pte: Path,
        vocab_size: int,
        max_seq_len: int,
        max_context_len: int,
        logits: str = "last",
        threads: int | None = None,
        sparse_kernel: str | None = None,
    ) -> None:
        from edgecpm.backends.executorch_ops import import_runtime_ops

        import_runtime_ops(sparse_kernel)
        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))
        from executorch.runtime import Runtime

        try:
            self._program = Runtime.get().load_program(Path(pte))
            self._method = self._program.load_method("forward")
        except (RuntimeError, ValueError) as exc:
            raise EdgecpmError(f"ExecuTorch cannot load {pte}: {exc}") from None
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.max_context_len = max_context_len
        self.all_logits_program = logits == "all"
        self._n_past = 0

    @property
    def n_past(self) -> int:
        return self._n_past

    def _run(self, ids: list[int]) -> torch.Tensor:
        """One `forward` call over <= max_seq_len tokens at the current position; advances it."""
        tokens = torch.tensor([ids], dtype=torch.long)
        pos = torch.tensor([self._n_past], dtype=torch.long)
        out = self._method.execute([tokens, pos])[0]
        self._n_past += len(ids)
        return out.reshape(-1, out.shape[-1])

    def _append(self, ids: Sequence[int], every: bool) -> np.ndarray:
        ids = [int(i) for i in ids]
        if not ids:
            raise EdgecpmError("prefill/decode needs at least one token")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise EdgecpmError(f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        if self._n_past + len(ids) > self.max_context_len:
            raise EdgecpmError(
                f"context of {self._n_past + len(ids)} tokens exceeds the exported maximum "
                f"context length {self.max_context_len}"
            )
        # a last-logits program gives one row per call, so per-position logits need one call per token
        step = self.max_seq_len if (self.all_logits_program or not every) else 1
        rows = [self._run(ids[i : i + step]) for i in range(0, len(ids), step)]
        out = torch.cat(rows) if every else rows[-1][-1:]
        return out.float().numpy()

    def prefill(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        self.reset()
        out = self._append(ids, all_logits)
        return out if all_logits else out[-1]

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        return self._append(ids, True)

    def truncate(self, n: int) -> None:
        if n < 0 or n > self._n_past:
            raise EdgecpmError(f"cannot truncate a state of {self._n_past} tokens to {n}")
        if getattr(self, "recurrent", False) and 0 < n < self._n_past:
            raise EdgecpmError(
                "this ExecuTorch program keeps lightning-attention (SALA) recurrent states, which "
                "cannot be rolled back; prefill again instead"
            )
        self._n_past = n

    def reset(self) -> None:
        self._n_past = 0


def open_backend(
    path: Any,
    config: Any,
    manifest: Any = None,
    *,
    source: Any = None,
    dtype: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    **_: Any,
) -> Opened:
    if manifest is None or manifest.format != "executorch":
        raise EdgecpmError(f"{path} is not an ExecuTorch artifact; export it with --format executorch first")
    if dtype not in (None, "float32", "fp32", "f32"):
        raise EdgecpmError(
            f"an ExecuTorch artifact runs in the dtype it was exported with; dtype {dtype!r} cannot be applied"
        )
    pte = Path(path) / manifest.model_files[0]
    if not pte.is_file():
        raise EdgecpmError(f"ExecuTorch program {pte} is missing")
    extra = manifest.extra
    backend = ExecuTorchBackend(
        pte,
        config.vocab_size,
        int(extra["max_seq_len"]),
        int(extra["max_context_len"]),
        extra.get("logits", "last"),
        threads,
        extra.get("sparse_kernel"),
    )
    backend.recurrent = config.has_lightning_layers  # SALA: lightning states cannot be rolled back
    return Opened(backend)
