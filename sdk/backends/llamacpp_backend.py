"""The llama.cpp backend: a GGUF file run by llama-cpp-python, behind the `Backend` protocol.

`llama_cpp.Llama` loads the model and context; evaluation goes straight to `llama_decode` with a batch whose
logits flags say which positions are wanted, so a prefill returns one row (or every row when asked) without
llama-cpp-python's `n_ctx x n_vocab` score buffer, and a speculative verify gets a row per draft token.
`truncate(n)` drops KV entries from position n on (`llama_memory_seq_rm`), which is speculative rollback.
The model is opened by `llamacpp_loader.open_llama`, which keeps weights out of llama.cpp's AMX path on AMX
CPUs (it crashes there).

Listed as "llama.cpp" in `registry.BACKENDS`; opens a plain `.gguf` path or a GGUF artifact folder
(`edgecpm.json`). llama.cpp has no InfLLM v2 kernel: a sparse model runs dense here (the torch backend runs it
sparse).
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecpm.backends.llamacpp_loader import open_llama
from edgecpm.backends.registry import Opened
from edgecpm.errors import EdgecpmError

DEFAULT_N_CTX = 4096
if importlib.util.find_spec("llama_cpp") is None:  # the registry names the extra that installs it
    raise ModuleNotFoundError("llama-cpp-python is not installed", name="llama_cpp")


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        threads: int | None = None,
        n_batch: int = 512,
        flash_attn: bool | None = None,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise EdgecpmError(f"GGUF file not found: {path}")
        # flash_attn=True: a batch's logits equal one-token-at-a-time logits (speculative verify; docs/speculative.md)
        fa = {} if flash_attn is None else {"flash_attn": bool(flash_attn)}
        try:
            self.llm = open_llama(
                path,
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                **fa,
            )
        except ValueError as exc:
            raise EdgecpmError(f"llama.cpp cannot load {path.name}: {exc}") from None
        self.path = path
        self.buffer_policy = self.llm.edgecpm_buffer_policy
        self.n_ctx = int(self.llm.n_ctx())
        self.n_batch = int(n_batch)
        self.threads = threads
        self.vocab_size = int(self.llm.n_vocab())
        self._n_past = 0

    @property
    def n_past(self) -> int:
        return self._n_past

    def prefill(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        self.reset()
        if not len(ids):
            raise EdgecpmError("prefill needs at least one token")
        return self._eval(ids, all_logits)

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        if not len(ids):
            raise EdgecpmError("decode needs at least one token")
        return self._eval(ids, True)

    def truncate(self, n: int) -> None:
        if n < 0 or n > self._n_past:
            raise EdgecpmError(f"cannot truncate a cache of {self._n_past} tokens to {n}")
        self.llm._ctx.kv_cache_seq_rm(0, n, -1)
        self._n_past = n

    def reset(self) -> None:
        if self._n_past:
            self.llm._ctx.kv_cache_seq_rm(0, 0, -1)
        self._n_past = 0

    def close(self) -> None:
        self.llm.close()

    def _eval(self, ids: Sequence[int], all_logits: bool) -> np.ndarray:
        tokens = [int(i) for i in ids]
        bad = [t for t in tokens if not 0 <= t < self.vocab_size]
        if bad:
            raise EdgecpmError(f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        if self._n_past + len(tokens) > self.n_ctx:
            raise EdgecpmError(
                f"context of {self._n_past + len(tokens)} tokens exceeds n_ctx={self.n_ctx}; load with a larger n_ctx"
            )
        ctx, batch, v = self.llm._ctx, self.llm._batch, self.vocab_size
        out = np.empty((len(tokens), v), dtype=np.float32) if all_logits else None
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            batch.set_batch(chunk, n_past=self._n_past, logits_all=all_logits)
            try:
                ctx.decode(batch)
            except RuntimeError as exc:
                raise EdgecpmError(f"llama.cpp failed to evaluate the batch: {exc}") from None
            self._n_past += len(chunk)
            if out is not None:
                out[start : start + len(chunk)] = np.ctypeslib.as_array(ctx.get_logits(), shape=(len(chunk), v))
        if out is not None:
            return out
        return np.ctypeslib.as_array(ctx.get_logits_ith(-1), shape=(v,)).copy()


def open_backend(
    path: Any,
    config: Any,
    manifest: Any = None,
    *,
    source: Any = None,
    dtype: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    n_ctx: int | None = None,
    n_batch: int = 512,
    flash_attn: bool | None = None,
    **_: Any,
) -> Any:
    """A plain `.gguf` -> backend; an artifact folder -> (backend, tokenizer from the GGUF vocabulary)."""
    p = Path(path)
    if p.is_dir():
        if manifest is None or manifest.format != "gguf":
            raise EdgecpmError(f"{p} is not a GGUF artifact; the llama.cpp backend runs .gguf files")
        model = p / manifest.model_files[0]
    elif p.suffix == ".gguf":
        model = p
    else:
        raise EdgecpmError("the llama.cpp backend runs .gguf files; export the checkpoint with --format gguf first")
    if config is not None and getattr(config, "sparse", None) is not None:
        warnings.warn(
            "llama.cpp has no InfLLM v2 kernel: this model's sparse attention runs dense here "
            "(use backend='torch' for sparse attention)",
            stacklevel=3,
        )
    if n_ctx is None:
        n_ctx = min(int(getattr(config, "max_position_embeddings", DEFAULT_N_CTX)), DEFAULT_N_CTX)
    backend = LlamaCppBackend(model, n_ctx=int(n_ctx), threads=threads, n_batch=int(n_batch), flash_attn=flash_attn)
    if not p.is_dir():
        return Opened(backend)
    import gguf

    from edgecpm.gguf_vocab import tokenizer_from_gguf

    eos = tuple(getattr(config, "eos_token_ids", ()) or ())
    return Opened(backend, tokenizer_from_gguf(gguf.GGUFReader(str(model)), eos))
