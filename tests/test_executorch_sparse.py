"""InfLLM v2 in an ExecuTorch program: the vectorized sparse algorithm traced into core ATen (stable sort
decomposed), its compressed keys kept in a mutable buffer, a torch.cond switching dense/sparse at dense_len, run
by the stock `executorch.runtime` and compared with the reference model's sparse attention on the same tokens."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.runtime")

import edgecpm  # noqa: E402
from edgecpm.exporters.executorch_lower import stable_sort_by_rank  # noqa: E402
from edgecpm.exporters.registry import run_export  # noqa: E402
from edgecpm.model import Model  # noqa: E402
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint  # noqa: E402
from edgecpm.weights import open_checkpoint  # noqa: E402
from tests.tiny_sparse import SPARSE  # noqa: E402

N = 72  # tokens checked: 3x dense_len, 9 key blocks, so block selection really drops blocks


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return cached_checkpoint(SyntheticSpec(sparse_config=SPARSE, init_std=0.5, seed=11))


@pytest.fixture(scope="module")
def artifact(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("et-sparse") / "sparse-fp32"
    run_export(checkpoint, "executorch", out, quant="fp32", max_seq_len=16, max_context_len=96, progress=False)
    return out


def test_stable_sort_decomposition_matches_torch_sort() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (2, 3, 19), generator=g).float()
    x[0, 0, 2] = float("inf")
    x[1, 2, :5] = float("-inf")
    for descending in (True, False):
        for dim in (-1, 1):
            want = torch.sort(x, dim=dim, descending=descending, stable=True)
            got = stable_sort_by_rank(x, stable=True, dim=dim, descending=descending)
            assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)


def test_sparse_program_matches_reference_sparse_attention(artifact: Path, checkpoint: Path) -> None:
    from edgecpm.exporters.manifest import read_manifest

    manifest = read_manifest(artifact)
    assert manifest.extra["sparse_attention"] == "switch" and manifest.extra["sparse_kernel"] == "decompose"
    et = edgecpm.load(artifact)
    config, source = open_checkpoint(checkpoint)
    sparse_ref = Model.from_source(config, source)
    dense_ref = Model.from_source(config.with_sparse(None), source)
    ids = torch.randint(0, config.vocab_size, (1, N), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = sparse_ref(ids)[0].numpy()
        dense = dense_ref(ids)[0].numpy()
    got = et.logits(ids[0].tolist())  # chunked prefill (16 tokens a call) crossing dense_len
    tail = slice(SPARSE["dense_len"] + 8, N)
    assert np.abs(dense[tail] - want[tail]).max() > 1e-2  # sparse attention really differs from dense here
    assert np.abs(got - want).max() < 1e-4
    # decode steps (T = 1) over the sparse range, after a prefill of 40
    et.backend.prefill(ids[0, :40].tolist())
    steps = np.stack([et.backend.decode([int(t)])[0] for t in ids[0, 40:56]])
    assert np.abs(steps - want[40:56]).max() < 1e-4


def test_sparse_modes_follow_dense_len() -> None:
    from edgecpm.config import SparseConfig
    from edgecpm.exporters.executorch_module import sparse_mode

    sp = SparseConfig(**SPARSE)
    assert sparse_mode(sp, 16) == "dense"  # contexts never reach dense_len: exported dense
    assert sparse_mode(sp, 96) == "switch"
    assert sparse_mode(replace(sp, dense_len=-1), 96) == "sparse"
    assert sparse_mode(None, 96) == "dense"


def test_default_context_runs_sparse_attention() -> None:
    """A default export of a sparse checkpoint gets a context at which sparse attention runs (2 x dense_len,
    capped by max_position_embeddings); a dense checkpoint keeps 1024."""
    from edgecpm.config import SparseConfig
    from edgecpm.exporters.executorch_exporter import default_context_len
    from edgecpm.exporters.executorch_module import sparse_mode

    config, _ = open_checkpoint(cached_checkpoint(SyntheticSpec(sparse_config=SPARSE, init_std=0.5, seed=11)))
    published = config.with_sparse(SparseConfig())
    assert default_context_len(published) == 16384 and sparse_mode(published.sparse, 16384) == "switch"
    assert default_context_len(config.with_sparse(None)) == 1024
    short = replace(published, max_position_embeddings=12000)
    assert default_context_len(short) == 12000  # capped, still past dense_len 8192


def test_compressed_key_buffer_holds_window_means(checkpoint: Path) -> None:
    """The module the program is traced from keeps each complete window's mean key in `ck_cache` after
    chunked prefill and single-token steps (nothing recompressed from scratch: only overlapping windows are
    written per call), compared with means taken directly from the key cache."""
    from edgecpm.backends.executorch_ops import import_runtime_ops
    from edgecpm.exporters.executorch_exporter import build_module

    import_runtime_ops()
    config, source = open_checkpoint(checkpoint)
    module, _ = build_module(config, source, 96, "fp32", max_seq_len=16)
    ids = torch.randint(0, config.vocab_size, (1, 50), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for start in range(0, 48, 16):
            module(ids[:, start : start + 16], torch.tensor([start]))
        module(ids[:, 48:49], torch.tensor([48]))
        module(ids[:, 49:50], torch.tensor([49]))
    ks, st = SPARSE["kernel_size"], SPARSE["kernel_stride"]
    n = (50 - ks) // st + 1
    for layer in module.layers:
        attn = layer.attn
        keys = attn.k_cache[0, :50]
        want = torch.stack([keys[i * st : i * st + ks].mean(0) for i in range(n)])
        assert torch.allclose(attn.ck_cache[0, :n], want, atol=1e-5)
