"""InfLLM v2 in an ExecuTorch program through the compiled kernel library (`sparse_kernel="compiled"`) and
through its decomposition (the portable default), each run by the stock `executorch.runtime` (prefill and
decode past dense_len) and compared with the reference torch model's sparse attention on the same tokens.

The compiled program's sparse branch is one `edgecpm::infllmv2_sparse_cache.out` node reading the KV cache
and compressed-key buffers in place; the backend builds and loads the kernel library from the manifest's
`sparse_kernel` before the program (checked in a fresh process, where the program alone does not load).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.runtime")

import edgecpm  # noqa: E402
from edgecpm.errors import EdgecpmError  # noqa: E402
from edgecpm.exporters.manifest import read_manifest  # noqa: E402
from edgecpm.exporters.registry import run_export  # noqa: E402
from edgecpm.model import Model  # noqa: E402
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint  # noqa: E402
from edgecpm.weights import open_checkpoint  # noqa: E402
from tests.tiny_sparse import SPARSE  # noqa: E402

pytestmark = [
    pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"),
    pytest.mark.usefixtures("one_thread"),
]

N = 72  # 3 x dense_len, 9 key blocks: block selection drops blocks
PREFILL = 40  # decode steps start past dense_len


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return cached_checkpoint(SyntheticSpec(sparse_config=SPARSE, init_std=0.5, seed=11))


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Sparse and dense reference logits of N random tokens (the torch model, an independent implementation)."""
    config, source = open_checkpoint(checkpoint)
    ids = torch.randint(0, config.vocab_size, (1, N), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        sparse = Model.from_source(config, source)(ids)[0].numpy()
        dense = Model.from_source(config.with_sparse(None), source)(ids)[0].numpy()
    return sparse, dense, ids[0]


def _export(checkpoint: Path, out: Path, kernel: str) -> Path:
    options = dict(quant="fp32", max_seq_len=16, max_context_len=96, progress=False)
    run_export(checkpoint, "executorch", out, sparse_kernel=kernel, **options)
    return out


@pytest.fixture(scope="module")
def compiled(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(checkpoint, tmp_path_factory.mktemp("et-kernel") / "compiled", "compiled")


def _check_program(artifact: Path, reference: tuple[np.ndarray, np.ndarray, torch.Tensor]) -> None:
    want, dense, ids = reference
    tail = slice(SPARSE["dense_len"] + 8, N)
    assert np.abs(dense[tail] - want[tail]).max() > 1e-2  # sparse attention really differs from dense here
    et = edgecpm.load(artifact)
    got = et.logits(ids.tolist())  # chunked prefill, 16 tokens a call, crossing dense_len
    assert np.abs(got - want).max() < 1e-3
    et.backend.prefill(ids[:PREFILL].tolist())
    steps = np.stack([et.backend.decode([int(t)])[0] for t in ids[PREFILL:N]])
    assert np.abs(steps - want[PREFILL:N]).max() < 1e-3


def test_compiled_program_matches_reference_sparse_attention(compiled: Path, reference) -> None:
    manifest = read_manifest(compiled)
    assert manifest.extra["sparse_attention"] == "switch" and manifest.extra["sparse_kernel"] == "compiled"
    _check_program(compiled, reference)


@pytest.mark.slow
def test_portable_program_matches_reference_sparse_attention(checkpoint: Path, reference, tmp_path: Path) -> None:
    """The default (decomposition) on the same tokens; slow: the traced sparse body lowers in minutes."""
    artifact = _export(checkpoint, tmp_path / "portable", "decompose")
    assert read_manifest(artifact).extra["sparse_kernel"] == "decompose"
    _check_program(artifact, reference)


PROBE = """
import json, sys
from executorch.runtime import Runtime
from edgecpm.backends.executorch_ops import import_runtime_ops
import edgecpm
import_runtime_ops()  # the stock kernel set only
try:
    Runtime.get().load_program(sys.argv[1] + "/model.pte").load_method("forward")
    bare = "loaded"
except (RuntimeError, ValueError) as exc:
    bare = str(exc)
m = edgecpm.load(sys.argv[1])
print(json.dumps({"bare": bare, "logits": m.logits([5, 6, 7]).shape[0]}))
"""


def test_program_needs_the_library_and_the_backend_loads_it(compiled: Path) -> None:
    """A fresh process: the program alone does not load (its op is the library's, not decomposed), while
    `edgecpm.load` loads the library named by the manifest first and runs it."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(compiled)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bare"] != "loaded" and result["logits"] == 3


def test_unbuildable_library_is_one_line_error(compiled: Path, monkeypatch, tmp_path: Path) -> None:
    from edgecpm.runtime_kernels import infllmv2_executorch

    monkeypatch.setitem(infllmv2_executorch._loaded, "handle", None)
    monkeypatch.setenv("EDGECPM_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(EdgecpmError) as err:
        edgecpm.load(compiled)
    assert "could not be built" in str(err.value) and "\n" not in str(err.value)


def test_android_bundle_refuses_a_compiled_kernel_program(compiled: Path, tmp_path: Path) -> None:
    """The app's runtime has no edgecpm kernel library: refused from the manifest, whatever this process loaded
    (edgecpm.load above has loaded the library here, so a load check alone would pass)."""
    from edgecpm.exporters.executorch_android import package_android

    edgecpm.load(compiled)  # the library is now in this process
    with pytest.raises(EdgecpmError, match="sparse_kernel=compiled"):
        package_android(compiled, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
