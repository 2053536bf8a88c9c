"""Which implementation runs each kernel: an explicit argument, else `EDGECPM_KERNELS`, else vectorized.

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

IMPLS = ("reference", "vectorized", "triton")
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
        return raw
    for part in raw.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in KERNELS:
            raise EdgecpmError(f"EDGECPM_KERNELS names kernel {name.strip()!r}; expected one of {', '.join(KERNELS)}")
        if name.strip() == kernel:
            return value.strip()
    return None


def resolve(kernel: str, device: torch.device, impl: str | None = None) -> str:
    """The implementation name to run `kernel` on `device`."""
    choice = impl if impl is not None else _from_env(kernel)
    if choice is None:
        return "vectorized"
    if choice not in IMPLS:
        raise EdgecpmError(f"kernel implementation {choice!r} for {kernel}; expected one of {', '.join(IMPLS)}")
    if choice == "triton":
        if not triton_available():
            raise EdgecpmError("the triton kernels need the 'triton' package (pip install edgecpm[triton])")
        if device.type != "cuda" and not triton_interpreting():
            raise EdgecpmError(f"the triton kernels need a CUDA device or TRITON_INTERPRET=1 (tensor on {device})")
    return choice
