"""The one way edgecpm opens llama.cpp: `open_llama(path, **Llama kwargs)`, safe on every CPU.

llama.cpp's CPU backend places weights in "extra" buffer types when it can: AMX (Intel Sapphire Rapids and
later) first, then CPU_REPACK (interleaved Q4_0 / Q4_K rows that AVX2 and ARM kernels decode faster). The AMX
path (`ggml_backend_amx_mul_mat`) segfaults on Q4_0 / Q4_1 models on AMX Xeons (an upstream crash closed
without a fix), so on an AMX CPU edgecpm loads with `use_extra_bufts = False` and puts back, through
llama.cpp's per-tensor buffer-type overrides, exactly the tensors CPU_REPACK would take on a CPU without AMX.
Everywhere else llama.cpp's own choice stands. `EDGECPM_LLAMACPP_EXTRA_BUFTS=1` forces llama.cpp's default
(AMX included), `=0` turns every extra buffer type off. Every llama.cpp load in edgecpm (backend, profiler,
exporter checks, benchmarks, tests) goes through here. Measurements: docs/benchmarks.md ("llama.cpp on AMX").
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecpm.errors import EdgecpmError

ENV_VAR = "EDGECPM_LLAMACPP_EXTRA_BUFTS"
AMX_FLAGS = ("amx_int8", "amx_tile", "amx_bf16")
# Weights that llama.cpp multiplies (MUL_MAT); the embedding (GET_ROWS) must stay in a plain buffer.
MATMUL_WEIGHT = re.compile(r"^(blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)|output)\.weight$")


@dataclass(frozen=True)
class BufferPolicy:
    """How weights are placed: "default" (llama.cpp's choice), "repack-only" (no AMX) or "plain" (none)."""

    mode: str
    reason: str


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The ISA flags of /proc/cpuinfo (x86 `flags`, ARM `Features`), or of a recorded cpuinfo text."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.M)
    return frozenset(m.group(1).split()) if m else frozenset()


def choose_policy(flags: frozenset[str], env: str | None, build_has_amx: bool | None = None) -> BufferPolicy:
    """Decide the weight placement from the CPU's flags, the override variable and the build's buffer types.

    `build_has_amx` is what ggml reports (None when it cannot be asked): a build without the AMX buffer type
    cannot crash in it, so llama.cpp's default stands there even on an AMX CPU.
    """
    if env is not None and env.strip() != "":
        value = env.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return BufferPolicy("default", f"{ENV_VAR}={env}: llama.cpp's own buffer types, AMX included")
        if value in ("0", "false", "no", "off"):
            return BufferPolicy("plain", f"{ENV_VAR}={env}: no extra buffer types (no AMX, no repacking)")
        raise EdgecpmError(f"{ENV_VAR} must be 0 or 1, got {env!r}")
    amx = [f for f in AMX_FLAGS if f in flags]
    if not amx:
        return BufferPolicy("default", "no AMX on this CPU: llama.cpp's own buffer types")
    if build_has_amx is False:
        return BufferPolicy("default", "AMX CPU, but this llama.cpp build has no AMX buffer type")
    return BufferPolicy(
        "repack-only",
        f"AMX CPU ({' '.join(amx)}): llama.cpp's AMX matmul crashes on Q4 models, so weights skip it; "
        "Q4_0/Q4_K rows are still repacked as on an AVX2 CPU",
    )


def repack_eligible(ggml_type: str, rows: int, ndim: int, flags: frozenset[str]) -> bool:
    """Would llama.cpp's CPU_REPACK take this weight on an x86 CPU without AMX (ggml's repack rules)?"""
    if ndim != 2 or rows % 8:
        return False
    if ggml_type in ("Q4_0", "Q4_K"):
        return "avx2" in flags
    return False


# --- asking ggml through its C API -------------------------------------------------------------------------


class _Override(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _ggml_libs() -> tuple[ctypes.CDLL, ctypes.CDLL] | None:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    try:
        ggml = ctypes.CDLL(str(next(lib_dir.glob("libggml.so*"))))
        base = ctypes.CDLL(str(next(lib_dir.glob("libggml-base.so*"))))
    except (StopIteration, OSError):
        return None
    return ggml, base


@functools.cache
def extra_buffer_types() -> dict[str, int] | None:
    """Name -> handle of the CPU backend's extra buffer types (e.g. AMX, CPU_REPACK); None if ggml won't say.

    Asked once per process: the build's buffer types do not change while it runs.
    """
    libs = _ggml_libs()
    if libs is None:
        return None
    ggml, base = libs
    try:
        ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
        for lib in (ggml, base):
            if hasattr(lib, "ggml_backend_dev_backend_reg"):
                dev_reg = lib.ggml_backend_dev_backend_reg
                break
        dev_reg.restype, dev_reg.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
        proc = base.ggml_backend_reg_get_proc_address
        proc.restype, proc.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]
        name_fn = base.ggml_backend_buft_name
        name_fn.restype, name_fn.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    except AttributeError:
        return None
    dev = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not dev:
        return None
    addr = proc(dev_reg(dev), b"ggml_backend_dev_get_extra_bufts")
    if not addr:
        return {}
    get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)
    arr = get_extra(dev)
    out: dict[str, int] = {}
    i = 0
    while arr and arr[i]:
        out[name_fn(arr[i]).decode()] = int(arr[i])
        i += 1
    return out


def _build_has_amx() -> bool | None:
    bufts = extra_buffer_types()
    return None if bufts is None else "AMX" in bufts


def repack_overrides(gguf_path: Path, flags: frozenset[str]) -> list[str]:
    """Regex patterns (one per layer) naming the weights CPU_REPACK takes on a CPU like this one minus AMX."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    by_layer: dict[str, list[str]] = {}
    for t in reader.tensors:
        if not MATMUL_WEIGHT.match(t.name):
            continue
        rows = int(t.shape[1]) if len(t.shape) > 1 else 1  # gguf lists ne0 (columns) first
        if repack_eligible(t.tensor_type.name, rows, len(t.shape), flags):
            head, _, rest = t.name.partition(".weight")
            layer, _, part = head.rpartition(".") if head.startswith("blk.") else ("", "", head)
            by_layer.setdefault(layer, []).append(part)
    patterns = []
    for layer, parts in by_layer.items():
        prefix = re.escape(layer + ".") if layer else ""
        patterns.append(f"^{prefix}({'|'.join(parts)})\\.weight$")
    return patterns


_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def _model_params(use_extra_bufts: bool, overrides: Any) -> Iterator[None]:
    """Make `llama_cpp.Llama` build its model params with our buffer-type settings (it has no argument)."""
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = use_extra_bufts
        if overrides is not None:
            params.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
        return params

    with _PARAMS_LOCK:
        lib.llama_model_default_params = patched
        try:
            yield
        finally:
            lib.llama_model_default_params = original


def current_policy() -> BufferPolicy:
    """The placement `open_llama` uses on this machine now (CPU flags, override variable, build)."""
    flags = cpu_flags()
    env = os.environ.get(ENV_VAR)
    needs_build = not env and any(f in flags for f in AMX_FLAGS)
    return choose_policy(flags, env, _build_has_amx() if needs_build else None)


def open_llama(path: str | Path, **kwargs: Any) -> Any:
    """`llama_cpp.Llama(path, **kwargs)` with the weight placement of `current_policy()`.

    The policy and the repacked tensor count are kept on the returned object as `edgecpm_buffer_policy`.
    """
    from llama_cpp import Llama

    kwargs.setdefault("verbose", False)
    policy = current_policy()
    if policy.mode == "default" or kwargs.get("vocab_only"):
        llm = Llama(str(path), **kwargs)
        llm.edgecpm_buffer_policy = policy
        return llm
    overrides = None
    patterns: list[str] = []
    bufts = extra_buffer_types() or {}
    if policy.mode == "repack-only" and "CPU_REPACK" in bufts:
        patterns = repack_overrides(Path(path), cpu_flags())
    if patterns:
        overrides = (_Override * (len(patterns) + 1))()
        keep = [p.encode() for p in patterns]
        for i, p in enumerate(keep):
            overrides[i].pattern = p
            overrides[i].buft = bufts["CPU_REPACK"]
        overrides[len(patterns)].pattern = None
    with _model_params(False, overrides):
        llm = Llama(str(path), **kwargs)
    llm.edgecpm_buffer_policy = policy
    return llm
