"""Which implementation runs each kernel: an explicit argument, else `EDGECPM_KERNELS`, else the default.

Default: the vectorized torch code, except InfLLM v2 on CPU tensors outside tracing, which runs the compiled
C++ kernel (`infllmv2_compiled`, built at first use) when it builds, and the vectorized code when it cannot.

`EDGECPM_KERNELS` is either one name for every kernel (`vectorized`) or per-kernel pairs
(`infllmv2=triton,lightning=vectorized,ternary=reference`). Default: the vectorized torch code on every
device, CUDA included: the Triton kernels have only run under `TRITON_INTERPRET=1` (never on a GPU), so they
are opt-in (`EDGECPM_KERNELS=triton`) until they are checked on one. Triton on a CPU tensor needs
`TRITON_INTERPRET=1`.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from edgecpm.errors import EdgecpmError

IMPLS = ("reference", "vectorized", "triton", "compiled")
KERNELS = ("infllmv2", "lightning", "ternary")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _from_env(kernel: str) -> str | None:
    raw = os.environ.get("EDGECPM_KERNELS", "").strip()
    if not raw:
        return None
    if "=" not in raw:
        return None if raw == "compiled" and kernel != "infllmv2" else raw  # only InfLLM v2 has one
    for part in raw.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in KERNELS:
            raise EdgecpmError(f"EDGECPM_KERNELS names kernel {name.strip()!r}; expected one of {', '.join(KERNELS)}")
        if name.strip() == kernel:
            return value.strip()
    return None


def resolve(kernel: str, device: torch.device, impl: str | None = None, build: bool = True) -> str:
    """The implementation name to run `kernel` on `device`.

    `build=False` (a call that will run dense attention anyway) picks the compiled kernel by default only if it
    is already loaded, so short contexts never wait for a compiler.
    """
    choice = impl if impl is not None else _from_env(kernel)
    if choice is None:
        return "compiled" if _compiled_default(kernel, device, build) else "vectorized"
    if choice not in IMPLS:
        raise EdgecpmError(f"kernel implementation {choice!r} for {kernel}; expected one of {', '.join(IMPLS)}")
    if choice == "triton":
        if not triton_available():
            raise EdgecpmError("the triton kernels need the 'triton' package (pip install edgecpm[triton])")
        if device.type != "cuda" and not triton_interpreting():
            raise EdgecpmError(f"the triton kernels need a CUDA device or TRITON_INTERPRET=1 (tensor on {device})")
    if choice == "compiled":
        if kernel != "infllmv2" or device.type != "cpu":
            raise EdgecpmError(f"the compiled kernel exists for infllmv2 on the CPU only ({kernel} on {device})")
        from edgecpm.runtime_kernels import infllmv2_compiled

        infllmv2_compiled.load()  # builds at first use; a one-line EdgecpmError if it cannot
    return choice


def _compiled_default(kernel: str, device: torch.device, build: bool) -> bool:
    """InfLLM v2 on CPU, eager (a traced graph keeps the portable torch body), and the kernel builds."""
    if kernel != "infllmv2" or device.type != "cpu" or torch.compiler.is_compiling():
        return False
    from edgecpm.runtime_kernels import infllmv2_compiled

    return infllmv2_compiled.available() if build else infllmv2_compiled.loaded()
