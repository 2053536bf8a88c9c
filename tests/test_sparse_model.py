"""The reference model with InfLLM v2 layers and MiniCPM-SALA hybrids, through `edgecpm.load`.

Checkpoint sparse settings are scaled down (blocks of 16) so a few hundred tokens cross `dense_len` and leave
most blocks unselected. `dense_len` is at most the selection budget (5 blocks = 80 tokens) so a long prefill
(sparse for every query, as published: the switch looks at the total length of each call) and token-by-token
decode (dense until `dense_len`) must agree exactly; docs/kernels.md explains the published case.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgecpm
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

SPARSE = {
    "kernel_size": 8,
    "kernel_stride": 4,
    "init_blocks": 1,
    "block_size": 16,
    "window_size": 32,
    "topk": 3,
    "use_nope": False,
    "dense_len": 64,
}
N = 220


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sparse_ckpt():
    return cached_checkpoint(
        SyntheticSpec(num_layers=2, num_heads=8, num_kv_heads=2, hidden_size=128, sparse_config=SPARSE, seed=3)
    )


@pytest.fixture(scope="module")
def sala_ckpt():
    return cached_checkpoint(
        SyntheticSpec(
            num_layers=4,
            num_heads=4,
            num_kv_heads=1,
            hidden_size=64,
            sala_mixers=("minicpm4", "lightning-attn"),
            sparse_config=SPARSE,
            seed=4,
        )
    )


def _ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab - 8, n).tolist()


def _prefill_vs_steps(model, ids: list[int], split: int) -> float:
    be = model.backend
    full = be.prefill(ids, all_logits=True)
    be.prefill(ids[:split])
    steps = np.concatenate([be.decode([i]) for i in ids[split:]])
    return float(np.abs(full[split:] - steps).max() / np.abs(full).max())


def test_sparse_model_prefill_equals_step_decode(sparse_ckpt) -> None:
    m = edgecpm.load(str(sparse_ckpt), backend="torch")
    assert all(s.attention == "infllmv2" for s in m.config.layers)
    ids = _ids(N, m.config.vocab_size)
    assert _prefill_vs_steps(m, ids, 30) < 1e-4
    state = m.backend.cache.layers[0].extras["infllmv2"]
    assert state.kernels_computed == (N - 8) // 4 + 1  # built incrementally, never recomputed


def test_sparse_model_is_sparse_above_dense_len(sparse_ckpt) -> None:
    """Logits equal the dense model's while every block fits the budget and differ once blocks are dropped."""
    from edgecpm.model import Model
    from edgecpm.weights import open_checkpoint

    config, source = open_checkpoint(sparse_ckpt)
    sparse = Model.from_source(config, source)
    dense = Model.from_source(config.with_sparse(None), source)
    x = torch.tensor(_ids(N, config.vocab_size, 1))[None]
    with torch.no_grad():
        a, b = sparse(x)[0], dense(x)[0]
    assert (a[:80] - b[:80]).abs().max() < 1e-4  # <= 5 blocks of 16: all selected
    assert (a[150:] - b[150:]).abs().max() > 1e-3
    with torch.no_grad():
        short = sparse(x[:, :63])[0]  # below dense_len: plain dense attention
    assert (short - b[:63]).abs().max() < 1e-4


def test_reference_kernels_give_same_model_logits(sparse_ckpt, monkeypatch) -> None:
    from edgecpm.model import Model
    from edgecpm.weights import open_checkpoint

    config, source = open_checkpoint(sparse_ckpt)
    model = Model.from_source(config, source)
    x = torch.tensor(_ids(120, config.vocab_size, 2))[None]
    with torch.no_grad():
        fast = model(x)
        monkeypatch.setenv("EDGECPM_KERNELS", "reference")
        ref = model(x)
    assert (fast - ref).abs().max() < 1e-4


def test_use_nope_prefill_equals_step_decode() -> None:
    ckpt = cached_checkpoint(
        SyntheticSpec(
            num_layers=2,
            num_heads=8,
            num_kv_heads=2,
            hidden_size=128,
            sparse_config={**SPARSE, "use_nope": True},
            seed=5,
        )
    )
    m = edgecpm.load(str(ckpt), backend="torch")
    assert m.config.sparse.use_nope
    assert _prefill_vs_steps(m, _ids(180, m.config.vocab_size, 3), 20) < 1e-4


def test_sala_checkpoint_loads_and_prefill_equals_step_decode(sala_ckpt) -> None:
    m = edgecpm.load(str(sala_ckpt), backend="torch")
    kinds = [s.attention for s in m.config.layers]
    assert kinds == ["infllmv2", "lightning", "infllmv2", "lightning"]
    assert _prefill_vs_steps(m, _ids(N, m.config.vocab_size, 4), 25) < 1e-4
    extras = m.backend.cache.layers[1].extras
    assert extras["lightning"].state.shape == (1, 4, 16, 16)
    text = m.generate("The", max_new_tokens=5, temperature=0.0)
    assert isinstance(text, str)


def test_sala_speculative_rollback(sala_ckpt) -> None:
    """decode 6 draft tokens, roll back to 2 of them, continue: same logits as never having drafted."""
    m = edgecpm.load(str(sala_ckpt), backend="torch")
    be = m.backend
    ids = _ids(120, m.config.vocab_size, 5)
    be.prefill(ids[:100])
    be.decode(ids[100:106])
    be.truncate(102)
    resumed = be.decode(ids[102:110])
    be.prefill(ids[:102])
    straight = be.decode(ids[102:110])
    assert np.abs(resumed - straight).max() < 1e-4 * np.abs(straight).max()


def test_sala_model_as_speculative_draft_rolls_back_across_its_draft_calls(sala_ckpt, tmp_path) -> None:
    """A SALA draft proposes k tokens in k decode calls; on a rejection its lightning states roll back over
    several calls. The draft is the target with noise added to its output head (same tokenizer), so some drafts
    are rejected: speculative greedy must still equal plain greedy token for token."""
    import shutil

    from safetensors.torch import load_file, save_file

    draft_dir = tmp_path / "draft"
    shutil.copytree(sala_ckpt, draft_dir)
    for f in draft_dir.glob("*.safetensors"):
        tensors = load_file(str(f))
        if "lm_head.weight" in tensors:
            w = tensors["lm_head.weight"].float()
            noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 0.6 * w.std()
            tensors["lm_head.weight"] = (w + noise).to(tensors["lm_head.weight"].dtype)
            save_file(tensors, str(f), metadata={"format": "pt"})
    target = edgecpm.load(str(sala_ckpt), backend="torch")
    draft = edgecpm.load(str(draft_dir), backend="torch")
    plain = target.generate_result("The", max_new_tokens=40, temperature=0.0)
    for k in (3, 6):
        spec = target.generate_result("The", max_new_tokens=40, temperature=0.0, draft=draft, draft_tokens=k)
        assert spec.token_ids == plain.token_ids, k
        stats = spec.extra["speculative"].to_dict()
        assert 0 < stats["accepted"] < stats["drafted"], stats  # some drafts kept, some rolled back


def test_static_cache_and_bf16(sparse_ckpt) -> None:
    """Static (preallocated, export-style) cache: keys arrive as strided slices; bf16 runs and stays close."""
    from edgecpm.model import Model
    from edgecpm.weights import open_checkpoint

    config, source = open_checkpoint(sparse_ckpt)
    model = Model.from_source(config, source)
    ids = torch.tensor(_ids(160, config.vocab_size, 6))[None]
    with torch.no_grad():
        full = model(ids)[0]
        cache = model.new_cache("static", max_len=200)
        steps = [model(ids[:, :100], cache)[0]] + [model(ids[:, i : i + 1], cache)[0] for i in range(100, 160)]
        assert (torch.cat(steps) - full).abs().max() < 1e-4 * full.abs().max()
        bf16 = Model.from_source(config, source, torch.bfloat16)
        low = bf16(ids)[0]
    assert torch.isfinite(low).all()
    assert torch.nn.functional.cosine_similarity(low[-1], full[-1], dim=0) > 0.99
