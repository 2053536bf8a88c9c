"""The compiled InfLLM v2 kernel as an ExecuTorch custom-kernel library, built from the package's sources.

`csrc/infllmv2_executorch.cpp` (the ExecuTorch binding of `csrc/infllmv2_core.h`) is compiled with the C++
compiler against the headers and `libexecutorch.so` that the executorch wheel ships (`include/`, `lib/`),
into the same kernel cache as the torch op (`~/.cache/edgecpm/kernels`, `EDGECPM_KERNEL_CACHE`). Loading it
into a process that has imported ExecuTorch's Python runtime registers `edgecpm::infllmv2_sparse_cpu.out` in
that runtime's operator registry, so a `.pte` whose graph holds `torch.ops.edgecpm.infllmv2_sparse_cpu`
(rewritten to the `.out` overload by `to_executorch`) runs it. Export needs the torch op too
(`infllmv2_compiled.load()`), which `load_runtime_kernels()` also loads.

The library also registers `edgecpm::infllmv2_sparse_cache.out`, the op the ExecuTorch exporter's
`sparse_kernel="compiled"` programs call: it reads the program's seq-major KV cache and compressed-key
buffers in place (`[1, rows, Hkv, D]`, visible length `start_pos + T`), so no cache slice is copied per call.
Importing this module defines that op for torch (schema, shape function, and an eager CPU kernel that runs
the compiled torch op on views of the buffers), which is what `torch.export` traces; the backend only needs
`load_executorch_kernels()`.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import threading
from importlib import metadata
from pathlib import Path

import torch

from edgecpm.errors import EdgecpmError
from edgecpm.runtime_kernels import infllmv2_compiled

SOURCE = "infllmv2_executorch.cpp"
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC")
# what the wheel's CMake config (share/cmake/executorch-config.cmake) says a consumer must compile with, and
# ET_USE_THREADPOOL: without it `parallel_for` is the header's serial loop; with it, libexecutorch_threadpool's
DEFINES = ("-DC10_USING_CUSTOM_GENERATED_MACROS", "-DET_EVENT_TRACER_ENABLED", "-DET_USE_THREADPOOL")

_lock = threading.Lock()
_loaded: dict[str, object] = {"handle": None}

CACHE_OP = "infllmv2_sparse_cache"
_CACHE_ARGS = (
    "Tensor q, Tensor k_cache, Tensor v_cache, Tensor ck_cache, SymInt start_pos, int kernel_size, "
    "int kernel_stride, int init_blocks, int block_size, int window_size, int topk, float scale"
)


def _cache_op_cpu(q, k_cache, v_cache, ck_cache, start_pos, ks, st, init_blocks, bs, window, topk, scale):
    """Eager kernel: the compiled torch op on views of the buffers (rows with a contiguous last dim: no copy)."""
    infllmv2_compiled.load()
    s = start_pos + q.shape[1]
    n_ck = min(ck_cache.shape[1], 0 if s < ks else (s - ks) // st + 1)
    qh = q.transpose(1, 2)
    k, v = k_cache[:, :s].transpose(1, 2), v_cache[:, :s].transpose(1, 2)
    ck = ck_cache[:, :n_ck].transpose(1, 2)
    return torch.ops.edgecpm.infllmv2_sparse_cpu(qh, k, v, ck, qh, ks, st, init_blocks, bs, window, topk, scale)


def _cache_op_out_cpu(q, k_cache, v_cache, ck_cache, start_pos, ks, st, init_blocks, bs, window, topk, scale, *, out):
    r = _cache_op_cpu(q, k_cache, v_cache, ck_cache, start_pos, ks, st, init_blocks, bs, window, topk, scale)
    out.resize_(r.shape).copy_(r)
    return out


def _define_cache_op() -> None:
    """`edgecpm::infllmv2_sparse_cache` (+ `.out`, what `to_executorch` rewrites it to) for torch."""
    if hasattr(torch.ops.edgecpm, CACHE_OP):
        return
    lib = torch.library.Library("edgecpm", "FRAGMENT")  # noqa: TOR901  (kept alive below)
    lib.define(f"{CACHE_OP}({_CACHE_ARGS}) -> Tensor")
    lib.define(f"{CACHE_OP}.out({_CACHE_ARGS}, *, Tensor(a!) out) -> Tensor(a!)")
    lib.impl(CACHE_OP, _cache_op_cpu, "CPU")
    lib.impl(f"{CACHE_OP}.out", _cache_op_out_cpu, "CPU")

    @torch.library.register_fake(f"edgecpm::{CACHE_OP}", lib=lib)
    def _fake(q, k_cache, v_cache, ck_cache, start_pos, ks, st, init_blocks, bs, window, topk, scale):
        return q.new_empty((q.shape[0], q.shape[2], q.shape[1], q.shape[3]))

    _loaded["library"] = lib


_define_cache_op()


def executorch_root() -> Path:
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise EdgecpmError("the ExecuTorch kernel library needs the executorch package (edgecpm[executorch])")
    root = Path(next(iter(spec.submodule_search_locations))).resolve()  # a namespace package: no __file__
    if not (root / "include" / "executorch").is_dir() or not (root / "lib" / "libexecutorch.so").is_file():
        raise EdgecpmError(f"this executorch install ({root}) ships no include/ or lib/libexecutorch.so to build with")
    return root


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise EdgecpmError("no C++ compiler found (set CXX): cannot build the ExecuTorch InfLLM v2 kernel")
    return cxx


def library_path() -> Path:
    """Where the library for these sources, this executorch and this CPU lives (not necessarily built yet)."""
    h = hashlib.sha256()
    for name in (SOURCE, *infllmv2_compiled.HEADERS):
        h.update((infllmv2_compiled.CSRC / name).read_bytes())
    h.update(" ".join(FLAGS + DEFINES).encode())
    h.update(metadata.version("executorch").encode())
    h.update(infllmv2_compiled._cpu_signature().encode())
    return infllmv2_compiled.build_dir().parent / f"infllmv2_executorch-{h.hexdigest()[:16]}" / "libedgecpm_et.so"


def build() -> Path:
    """Compile the library if this key has none yet; one-line `EdgecpmError` on failure."""
    lib = library_path()
    if lib.is_file():
        return lib
    root = executorch_root()
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".tmp{os.getpid()}.so")
    cmd = [
        _compiler(),
        *FLAGS,
        *DEFINES,
        f"-I{root / 'include'}",
        f"-I{root / 'include' / 'executorch' / 'runtime' / 'core' / 'portable_type' / 'c10'}",
        f"-I{infllmv2_compiled.CSRC}",
        str(infllmv2_compiled.CSRC / SOURCE),
        "-o",
        str(tmp),
        f"-L{root / 'lib'}",
        "-lexecutorch",
        "-lexecutorch_threadpool",
        f"-Wl,-rpath,{root / 'lib'}",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EdgecpmError(f"the ExecuTorch InfLLM v2 kernel could not be built ({exc})") from None
    if done.returncode:
        first = next((ln for ln in done.stderr.splitlines() if "error" in ln), done.stderr.strip()[:200])
        raise EdgecpmError(f"the ExecuTorch InfLLM v2 kernel could not be built ({first.strip()})")
    tmp.replace(lib)  # complete file under its final name only
    return lib


def load_executorch_kernels() -> Path:
    """Build if needed and load the kernel library into ExecuTorch's Python runtime (what a program holding
    the ops needs before it loads). Idempotent."""
    with _lock:
        if _loaded["handle"] is not None:
            return library_path()
        lib = build()
        from executorch.extension.pybindings import portable_lib  # noqa: F401  (loads libexecutorch.so first)

        try:
            _loaded["handle"] = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise EdgecpmError(f"the ExecuTorch InfLLM v2 kernel library {lib} does not load ({exc})") from None
        return lib


def load_runtime_kernels() -> Path:
    """The ExecuTorch library and the torch op (for exporting programs that hold it). Idempotent."""
    infllmv2_compiled.load()
    return load_executorch_kernels()
