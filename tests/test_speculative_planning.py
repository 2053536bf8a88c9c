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
