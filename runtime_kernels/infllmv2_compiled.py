"""The compiled InfLLM v2 CPU kernel: C++ built from the package's own sources at first use.

`csrc/infllmv2_core.h` (framework-free kernel) + `csrc/infllmv2_cpu.cpp` (torch binding) are compiled by
`torch.utils.cpp_extension.load` with `-O3 -march=native` into `~/.cache/edgecpm/kernels/infllmv2_cpu-<key>`
(`EDGECPM_KERNEL_CACHE` overrides the parent folder), the key hashing the sources, flags, torch version and
the CPU's feature flags, so a changed source or another CPU gets its own build and a built one loads in
well under a second. Loading registers `torch.ops.edgecpm.infllmv2_sparse_cpu`. Without a working C++
compiler `available()` says why in one warning line and the registry keeps the vectorized torch code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import platform
import shutil
import threading
import warnings
from pathlib import Path

import torch

from edgecpm.config import SparseConfig
from edgecpm.errors import EdgecpmError

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("infllmv2_cpu.cpp",)
HEADERS = ("infllmv2_core.h",)
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-std=c++17")
OP = "infllmv2_sparse_cpu"

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "error": None, "warned": False}


def _cpu_signature() -> str:
    """The CPU's feature flags (a -march=native build must not be reused on a CPU lacking them)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    return platform.processor() or platform.machine()


def build_key() -> str:
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update((CSRC / name).read_bytes())
    h.update(" ".join(FLAGS).encode())
    h.update(torch.__version__.encode())
    h.update(platform.machine().encode())
    h.update(_cpu_signature().encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    root = os.environ.get("EDGECPM_KERNEL_CACHE") or Path.home() / ".cache" / "edgecpm" / "kernels"
    return Path(root) / f"infllmv2_cpu-{build_key()}"


def load() -> None:
    """Build (once per source/CPU/torch) and load the kernel library; `EdgecpmError` (one line) if impossible."""
    with _lock:
        if _state["loaded"]:
            return
        if _state["error"] is not None:
            raise EdgecpmError(str(_state["error"]))
        try:
            _build_and_load()
        except Exception as exc:  # compiler missing or failing: one line, the portable path stays
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            _state["error"] = f"the compiled InfLLM v2 CPU kernel could not be built ({first[:200]})"
            raise EdgecpmError(str(_state["error"])) from None
        _state["loaded"] = True


def _registered() -> bool:
    return hasattr(torch.ops.edgecpm, OP)


def _build_and_load() -> None:
    from torch.utils import cpp_extension

    if _registered():  # another build is loaded in this process: a second one would abort on re-registration
        _register_fake()
        return

    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    name = f"edgecpm_infllmv2_cpu_{out.name.rsplit('-', 1)[1]}"
    lib = out / f"{name}.so"
    build = not lib.exists()
    if not build:  # built before: load without invoking ninja
        try:
            torch.ops.load_library(str(lib))
        except (OSError, RuntimeError):  # a stale or truncated build (an interrupted first build): build again
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True, exist_ok=True)
            build = True
    if build:
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                cpp_extension.load(
                    name=name,
                    sources=[str(CSRC / s) for s in SOURCES],
                    extra_cflags=list(FLAGS),
                    extra_include_paths=[str(CSRC)],
                    build_directory=str(out),
                    is_python_module=False,
                    verbose=False,
                )
        except Exception as exc:
            text = f"{exc} {exc.__cause__ or ''}"
            tail = [ln for ln in text.splitlines() if "error" in ln.lower()]
            raise RuntimeError(tail[0] if tail else text.strip()) from None
    if not _registered():
        raise RuntimeError(f"{lib} does not register edgecpm::{OP}")
    _register_fake()


def _register_fake() -> None:
    """Shape function, so graphs holding the op can be traced (torch.export keeps it as one node)."""
    name = f"edgecpm::{OP}"
    with contextlib.suppress(RuntimeError):  # already registered in this process

        @torch.library.register_fake(name)
        def _fake(q, k, v, ck, score_q, kernel_size, kernel_stride, init_blocks, block_size, window_size, topk, scale):
            return q.new_empty(q.shape, dtype=torch.float32)


def loaded() -> bool:
    return bool(_state["loaded"])


def available() -> bool:
    """True when the kernel is loaded (building it now if needed); else one warning line, once, and False."""
    if _state["loaded"]:
        return True
    try:
        load()
        return True
    except EdgecpmError as exc:
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn(f"{exc}; using the vectorized torch InfLLM v2 kernel", RuntimeWarning, stacklevel=2)
        return False


def infllmv2_compiled(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sp: SparseConfig,
    ck: torch.Tensor | None = None,
    scale: float | None = None,
    score_q: torch.Tensor | None = None,
    score_k: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `infllmv2_vectorized` (dense below `dense_len`), sparse part in the compiled kernel."""
    from edgecpm.runtime_kernels.dense import dense_attention
    from edgecpm.runtime_kernels.infllmv2_vectorized import compress_keys

    s = k.shape[2]
    if 0 <= sp.dense_len and s < sp.dense_len:
        return dense_attention(q, k, v, scale=scale)
    load()
    if ck is None:
        ck = compress_keys(k if score_k is None else score_k, sp.kernel_size, sp.kernel_stride)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.ops.edgecpm.infllmv2_sparse_cpu(
        q,
        k,
        v,
        ck,
        q if score_q is None else score_q,
        sp.kernel_size,
        sp.kernel_stride,
        sp.init_blocks,
        sp.block_size,
        sp.window_size,
        sp.topk,
        float(scale),
    )
    return out.to(q.dtype)
