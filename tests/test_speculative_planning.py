"""The planner's draft choice: the expected-length formula against a direct sum, and plans that take a draft
only where the cost model predicts a gain (none for a target that is already 4-bit)."""

from __future__ import annotations

import numpy as np
import pytest

import edgecpm
from edgecpm.speculative.planning import MIN_GAIN, expected_tokens_per_round, predicted_speedup


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.75, 1.0])
def test_expected_tokens_per_round_is_the_geometric_sum(rate) -> None:
    for k in range(1, 9):
        # tokens per round = accepted prefix length + 1; P(prefix >= i) = rate^i
        assert expected_tokens_per_round(rate, k) == pytest.approx(sum(rate**i for i in range(k + 1)))
    rng = np.random.default_rng(0)
    k = 4
    draws = rng.random((20000, k)) < rate
    prefix = np.where(draws.all(1), k, np.argmin(draws, 1))
    assert expected_tokens_per_round(rate, k) == pytest.approx(prefix.mean() + 1, abs=0.05)


def test_speedup_accounts_for_draft_and_verify_cost() -> None:
    assert predicted_speedup(0.0, 3, 0.0, 0.0) == pytest.approx(1.0)  # nothing accepted, verify free
    assert predicted_speedup(0.8, 3, 0.0, 0.1) == pytest.approx(expected_tokens_per_round(0.8, 3) / 1.3)
    assert predicted_speedup(0.8, 3, 0.5, 0.1) < predicted_speedup(0.8, 3, 0.1, 0.1)
    assert predicted_speedup(0.8, 7, 0.0, 0.5) == pytest.approx(expected_tokens_per_round(0.8, 7) / 4.5)
    # this CPU (docs/benchmarks.md): q4_0 step 0.81 of a q8_0 step, 20 ms per extra verified token of a 56 ms step
    assert predicted_speedup(0.72, 2, 0.81, 20 / 55.8) == pytest.approx(0.73, rel=0.1)  # measured 0.73x


def test_plans_draft_only_when_it_gains() -> None:
    q4 = edgecpm.plan("minicpm4-8b", "snapdragon-8-gen3").to_dict()["choice"]
    assert q4["quant"].startswith(("q4", "8da4w", "int4")) and q4["draft"] is None
    assert "already" in q4["draft_reason"]
    for device in ("x86-64-laptop", "rtx-4090", "jetson-orin-nano-8gb"):
        c = edgecpm.plan("minicpm4-0.5b", device, quant="q8_0").to_dict()["choice"]
        if c["draft"] is None:
            assert any(w in c["draft_reason"] for w in ("no draft gains", "already", "no q4_0"))
        else:
            d = c["draft"]
            assert d["source"] == "q4_0 self-draft" and 1 <= d["draft_tokens"] <= 8
            assert d["predicted_speedup"] >= MIN_GAIN
            assert d["predicted_decode_tokens_per_s"] > c["predicted"]["decode_tokens_per_s"]


def test_report_section_renders_table_and_plot(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from edgecpm.speculative.report import PLOT_NAME, section_markdown

    rows = [
        {
            "target": "t",
            "task": "repeat",
            "draft": "prompt-lookup",
            "k": k,
            "decode_speedup": s,
            "acceptance_length": 1 + s,
            "tokens_per_target_forward": s,
            "lossless": True,
        }
        for k, s in ((2, 1.2), (4, 1.5), (8, 1.9))
    ]
    md = section_markdown(rows, tmp_path)
    assert md.count("| prompt-lookup |") == 3 and "1.90×" in md
    png = (tmp_path / PLOT_NAME).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_eagle_step_ratio_counts_the_weights_each_step_reads() -> None:
    """Against parameter counts of the real modules: an EagleHead (fc + its decoder layer) plus the output rows
    it multiplies, over the target's decoder layers plus its head (norms are negligible and left out)."""
    import torch

    from edgecpm.model import Model
    from edgecpm.speculative.eagle import EagleHead
    from edgecpm.speculative.planning import eagle_step_ratio
    from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
    from edgecpm.weights import open_checkpoint

    config, source = open_checkpoint(cached_checkpoint(SyntheticSpec(num_layers=6, seed=2)))
    with torch.device("meta"):
        target = Model(config)
        head = EagleHead(config)

    def matrices(module) -> int:
        return sum(p.numel() for p in module.parameters() if p.dim() == 2)

    layers = sum(matrices(layer) for layer in target.layers.values())
    out_rows = config.vocab_size * config.hidden_size
    for rows in (None, 100):
        drafted = matrices(head) + (out_rows if rows is None else rows * config.hidden_size)
        assert eagle_step_ratio(config, rows) == pytest.approx(drafted / (layers + out_rows), rel=1e-9)


def _write_head_description(model_dir, config, top1: float, by_rows: dict[str, float]) -> None:
    import json

    from edgecpm.speculative.eagle_files import FORMAT, SHAPE_FIELDS, VERSION, head_path

    meta = {"format": FORMAT, "version": VERSION, **{f: getattr(config, f) for f in SHAPE_FIELDS}}
    meta.update(held_out_top1=top1, held_out_top1_fr=by_rows)
    head_path(model_dir).write_text(json.dumps(meta))


def test_planner_weighs_an_eagle_head_beside_a_torch_target(tmp_path) -> None:
    import shutil

    from edgecpm.speculative.planning import eagle_step_ratio
    from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
    from edgecpm.weights import open_checkpoint

    model = tmp_path / "model"
    shutil.copytree(cached_checkpoint(SyntheticSpec(num_layers=6, seed=2)), model)
    config, _ = open_checkpoint(model)
    assert edgecpm.plan(model, "x86-64-laptop", backend="torch").draft is None  # no head yet
    _write_head_description(model, config, 0.8, {"64": 0.5})
    plan = edgecpm.plan(model, "x86-64-laptop", backend="torch")
    p = plan.choice.prediction
    best = max(
        (
            predicted_speedup(rate, k, eagle_step_ratio(config, rows), p.decode_tokens_per_s / p.prefill_tokens_per_s),
            src,
        )
        for src, rate, rows in (("eagle", 0.8, None), ("eagle+fr:64", 0.5, 64))
        for k in range(1, 9)
    )
    assert plan.draft is not None and plan.draft["source"] == best[1]
    assert plan.draft["predicted_speedup"] == pytest.approx(best[0], abs=1e-3)
    assert "held-out first-step agreement" in plan.draft_reason
    _write_head_description(model, config, 0.02, {"64": 0.01})  # an untrained head: no gain, and it says so
    plan = edgecpm.plan(model, "x86-64-laptop", backend="torch")
    assert plan.draft is None and "eagle" in plan.draft_reason
