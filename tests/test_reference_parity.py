"""The torch reference model against an independent float64 implementation of the published math."""

from __future__ import annotations

import numpy as np
import pytest

import edgecpm
from tests.float64_reference import forward, load_checkpoint


@pytest.mark.parametrize("fixture", ["tiny_tied", "tiny_untied"])
def test_fp32_logits_match_float64_reference(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    cfg, weights = load_checkpoint(path)
    rng = np.random.default_rng(0)
    ids = [1] + rng.integers(3, cfg["vocab_size"], 47).tolist()
    expected = forward(cfg, weights, ids)
    got = edgecpm.load(path).logits(ids)
    assert got.shape == (len(ids), cfg["vocab_size"])
    assert np.abs(got - expected).max() <= 1e-3
    # the logits are far from flat, so the comparison is meaningful
    assert expected.std() > 0.5


def test_untied_head_is_used(tiny_untied) -> None:
    cfg, weights = load_checkpoint(tiny_untied)
    assert "lm_head.weight" in weights
    m = edgecpm.load(tiny_untied)
    assert m.config.tie_word_embeddings is False
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"]  # what a wrongly tied model would compute
    ids = [1, 5, 9, 33, 70]
    assert np.abs(m.logits(ids) - forward(cfg, weights, ids)).max() > 1e-2


def test_longrope_factors_change_the_model(tiny_tied) -> None:
    """Ignoring rope_scaling (as some runtimes do) must give different logits: the factors are applied."""
    cfg, weights = load_checkpoint(tiny_tied)
    ids = list(range(3, 60))
    got = edgecpm.load(tiny_tied).logits(ids)
    no_scaling = dict(cfg)
    no_scaling.pop("rope_scaling")
    assert np.abs(got - forward(cfg, weights, ids)).max() <= 1e-3
    assert np.abs(got - forward(no_scaling, weights, ids)).max() > 1e-2


def test_bf16_compute_stays_close(tiny_tied) -> None:
    cfg, weights = load_checkpoint(tiny_tied)
    ids = [1, 40, 41, 42, 300, 12]
    expected = forward(cfg, weights, ids)
    got = edgecpm.load(tiny_tied, dtype="bfloat16").logits(ids)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.8
    assert np.abs(got - expected).max() < 0.5


def test_shared_layer_ode_model_matches_float64_reference() -> None:
    from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

    path = cached_checkpoint(SyntheticSpec(num_layers=4, shared_unique_layers=2, ode_step=2.0, seed=3))
    cfg, weights = load_checkpoint(path)
    assert "model.layers.2.mlp.up_proj.weight" not in weights  # stored once
    ids = [1, 9, 80, 300, 41, 7, 12]
    m = edgecpm.load(path)
    assert m.config.num_weight_layers == 2
    assert np.abs(m.logits(ids) - forward(cfg, weights, ids)).max() <= 1e-3


def test_hf_tokenizer_json_checkpoint(tiny_tied, tmp_path) -> None:
    """A checkpoint that ships only tokenizer.json is tokenized exactly as the `tokenizers` library does."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    d = tmp_path / "ckpt"
    shutil.copytree(tiny_tied, d)
    (d / "tokenizer.model").unlink()
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(
        ["the game was composed by the team", "a small model runs on the phone"] * 50,
        trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]),
    )
    tk.save(str(d / "tokenizer.json"))
    m = edgecpm.load(d)
    text = "the phone runs a small game"
    assert m.tokenizer.encode(text, add_bos=False) == tk.encode(text).ids
    assert m.logits(m.tokenizer.encode(text)).shape[0] == len(tk.encode(text).ids) + int(m.tokenizer.add_bos)
