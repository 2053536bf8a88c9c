"""The onnxruntime backend: runs an edgecpm ONNX artifact behind the `Backend` protocol.

The graph takes the past KV cache as inputs and returns the grown cache (`present.*`), so the decoding state
is just the list of present tensors, kept as `OrtValue`s between steps (no numpy round trip). `truncate(n)`
slices them to n positions (speculative rollback). MiniCPM-SALA graphs also carry each lightning layer's
recurrent state (`past_key_values.N.recurrent_state`); it cannot be sliced, so `truncate` re-runs the kept part
of the latest call from the state before it, and long prompts go in chunks of `CHUNK` tokens. Threads come
from `edgecpm.load(..., device=...)`'s device profile or the `threads` argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgecpm.backends.registry import Opened
from edgecpm.errors import EdgecpmError

PAST = "past_key_values."
RECURRENT = ".recurrent_state"
COMPRESSED = ".compressed_keys"  # InfLLM v2: one row per complete key window (kernel_size keys every stride)
CHUNK = 256  # most tokens per graph call when the graph has lightning layers


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
        # every state input the graph declares, in its order: K/V caches (grow) and SALA recurrent states (fixed);
        # InfLLM v2 compressed keys are inputs with an empty default (an overridable initializer), fed too
        declared = [*self.session.get_inputs(), *self.session.get_overridable_initializers()]
        self._past_names = [i.name for i in declared if i.name.startswith(PAST)]
        self._state_names = ["present." + n[len(PAST) :] for n in self._past_names]
        self._zero_shapes = {
            i.name: (1, *(d if isinstance(d, int) else 0 for d in i.shape[1:]))
            for i in declared
            if i.name.startswith(PAST)
        }
        self.recurrent = any(n.endswith(RECURRENT) for n in self._past_names)
        self._out_names = ["logits", *self._state_names]
        self._past: list[ort.OrtValue] | None = None
        self._n = 0
        # a recurrent state cannot be sliced back: keep the state before the latest call and its tokens
        self._base: tuple[list[ort.OrtValue] | None, int] = (None, 0)
        self._last_ids: list[int] = []

    @property
    def n_past(self) -> int:
        return self._n

    def _empty_past(self) -> list[ort.OrtValue]:
        return [
            ort.OrtValue.ortvalue_from_numpy(np.zeros(self._zero_shapes[n], dtype=np.float32)) for n in self._past_names
        ]

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        if not len(ids):
            raise EdgecpmError("the ONNX backend needs at least one token per call")
        arr = np.asarray(list(ids), dtype=np.int64)[None]
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise EdgecpmError(f"token id outside the vocabulary (size {self.vocab_size})")
        self._base, self._last_ids = (self._past, self._n), [int(t) for t in arr[0]]
        if self.recurrent and arr.shape[1] > CHUNK:  # lightning layers build an [H, S, S] mask per call
            rows = [self._call(arr[:, s : s + CHUNK]) for s in range(0, arr.shape[1], CHUNK)]
            return np.concatenate(rows)
        return self._call(arr)

    def _call(self, arr: np.ndarray) -> np.ndarray:
        past = self._past if self._past is not None else self._empty_past()
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", arr)
        binding.bind_cpu_input("attention_mask", np.ones((1, self._n + arr.shape[1]), dtype=np.int64))
        for name, value in zip(self._past_names, past):
            binding.bind_ortvalue_input(name, value)
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
        if self.recurrent:
            self._replay(n)
            return
        self._past = [
            ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, : self._kept(name, n)]))
            for name, v in zip(self._past_names, self._past)
        ]
        self._n = n

    def _kept(self, name: str, n: int) -> int:
        """Entries of a state tensor that describe the first n tokens (compressed keys: complete windows)."""
        if name.endswith(COMPRESSED):
            sp = self.config.sparse
            return 0 if n < sp.kernel_size else (n - sp.kernel_size) // sp.kernel_stride + 1
        return n

    def _replay(self, n: int) -> None:
        """Back to the state before the latest call, then run its first n - base tokens again."""
        base_past, base_n = self._base
        if n < base_n:
            raise EdgecpmError(
                f"cannot roll a lightning-attention (SALA) state back from {self._n} to {n} tokens "
                f"(only to {base_n}..{self._n}, the span of the latest call); prefill again instead"
            )
        keep = self._last_ids[: n - base_n]
        self._past, self._n = base_past, base_n
        if keep:
            self._run(keep)

    def reset(self) -> None:
        self._past = None
        self._n = 0
        self._base, self._last_ids = (None, 0), []


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
