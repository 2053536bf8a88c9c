"""The onnxruntime backend: runs an edgecpm ONNX artifact behind the `Backend` protocol.

The graph takes the past KV cache as inputs and returns the grown cache (`present.*`), so the decoding state
is just the list of present tensors, kept as `OrtValue`s between steps (no numpy round trip). `truncate(n)`
slices them to n positions (speculative rollback). Threads come from `edgecpm.load(..., device=...)`'s device
profile or the `threads` argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgecpm.backends.registry import Opened
from edgecpm.errors import EdgecpmError


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, model_file: str | Path, config: Any, *, threads: int | None = None) -> None:
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise EdgecpmError(f"onnxruntime cannot load {model_file}: {str(exc).splitlines()[0]}") from None
        self.config = config
        self.vocab_size = config.vocab_size
        self.threads = threads
        self._kv_names = [
            f"{kind}.{i}.{kv}" for i in range(config.num_layers) for kind in ("present",) for kv in ("key", "value")
        ]
        self._out_names = ["logits", *self._kv_names]
        self._past: list[ort.OrtValue] | None = None
        self._n = 0

    @property
    def n_past(self) -> int:
        return self._n

    def _empty_past(self) -> list[ort.OrtValue]:
        c = self.config
        zero = np.zeros((1, c.num_kv_heads, 0, c.head_dim), dtype=np.float32)
        return [ort.OrtValue.ortvalue_from_numpy(zero) for _ in self._kv_names]

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        if not len(ids):
            raise EdgecpmError("the ONNX backend needs at least one token per call")
        arr = np.asarray(list(ids), dtype=np.int64)[None]
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise EdgecpmError(f"token id outside the vocabulary (size {self.vocab_size})")
        past = self._past if self._past is not None else self._empty_past()
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", arr)
        binding.bind_cpu_input("attention_mask", np.ones((1, self._n + arr.shape[1]), dtype=np.int64))
        for i in range(self.config.num_layers):
            binding.bind_ortvalue_input(f"past_key_values.{i}.key", past[2 * i])
            binding.bind_ortvalue_input(f"past_key_values.{i}.value", past[2 * i + 1])
        for name in self._out_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        self._past = list(outs[1:])
        self._n += arr.shape[1]
        return outs[0].numpy()[0]

    def prefill(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        self.reset()
        logits = self._run(ids)
        return logits if all_logits else logits[-1]

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        return self._run(ids)

    def truncate(self, n: int) -> None:
        if n < 0 or n > self._n:
            raise EdgecpmError(f"cannot truncate a state of {self._n} tokens to {n}")
        if n == self._n:
            return
        if n == 0:
            self.reset()
            return
        assert self._past is not None
        self._past = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, :n])) for v in self._past]
        self._n = n

    def reset(self) -> None:
        self._past = None
        self._n = 0


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
    p = Path(path)
    files = getattr(manifest, "model_files", None) or ["model.onnx"]
    model_file = p / files[0] if p.is_dir() else p
    if not model_file.is_file():
        raise EdgecpmError(f"ONNX model file not found: {model_file}")
    if dtype not in (None, "float32", "fp32", "f32"):
        raise EdgecpmError(f"the ONNX backend computes in float32 (dtype {dtype!r} is fixed at export time)")
    return Opened(OnnxBackend(model_file, config, threads=threads))
