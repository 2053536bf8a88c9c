"""Determinism: exporting the same checkpoint twice gives byte-identical files, for every format.

Each export is its own `edgecpm export` process with a different PYTHONHASHSEED and a different output folder
name, so nothing may depend on set/dict order, process ids, times or paths.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _export(src: Path, fmt: str, quant: str, out: Path, hash_seed: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecpm",
            "export",
            str(src),
            "--format",
            fmt,
            "--quant",
            quant,
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


def _check_identical(src: Path, fmt: str, quant: str, tmp_path: Path) -> None:
    a = _export(src, fmt, quant, tmp_path / f"first-{fmt}", "1")
    b = _export(src, fmt, quant, tmp_path / f"second-{fmt}-other-name", "2")
    assert a.keys() == b.keys()
    differing = [name for name in a if a[name] != b[name]]
    assert not differing, f"{fmt} {quant}: {differing} differ between two exports"


@pytest.mark.parametrize("fmt,quant", [("gguf", "q4_k_m"), ("gguf", "q8_0"), ("onnx", "int4"), ("onnx", "fp16")])
def test_export_is_byte_identical(tiny_untied, tmp_path, fmt, quant):
    _check_identical(tiny_untied, fmt, quant, tmp_path)


@pytest.mark.slow
def test_executorch_export_is_byte_identical(tiny_untied, tmp_path):
    """ExecuTorch lowering takes ~1-2 minutes per export on 2 cores."""
    _check_identical(tiny_untied, "executorch", "8da4w", tmp_path)
