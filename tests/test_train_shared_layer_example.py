"""examples/train_shared_layer.py runs end to end on the bundled excerpt, and the perplexity it reports for a
step count equals one computed independently (float64 forward Euler on its saved checkpoint)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np

import edgecpm
from tests import float64_reference as f64

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_shared_layer.py"
EXCERPT = Path(edgecpm.__file__).parent / "data" / "wikitext2_excerpt.txt"


def _example():
    spec = importlib.util.spec_from_file_location("train_shared_layer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_runs_write_checkpoints_and_honest_perplexities(tmp_path: Path) -> None:
    ex = _example()
    out = tmp_path / "run"
    report = ex.main(
        [
            "--text",
            str(EXCERPT),
            "--eval-text",
            "",
            "--max-steps",
            "3",
            "--hidden",
            "32",
            "--intermediate",
            "64",
            "--layers",
            "4",
            "--seq",
            "32",
            "--batch",
            "4",
            "--eval-tokens",
            "128",
            "--eval-steps",
            "1,4",
            "--out",
            str(out),
        ]
    )
    assert [r["run"] for r in report["runs"]] == ["plain", "random-steps"]
    assert json.loads((out / "results.json").read_text())["runs"][1]["optimizer_steps"] == 3
    run = report["runs"][1]
    ckpt = Path(run["checkpoint"])
    assert edgecpm.load(ckpt).config.num_weight_layers == 1
    # recompute the N = 1 perplexity: same windows, float64 forward Euler with one step of size h * L
    tok = edgecpm.load(ckpt).tokenizer
    text = EXCERPT.read_text(encoding="utf-8")
    ids: list[int] = []
    for line in text.splitlines():
        if line.strip():
            ids += tok.encode(line.strip() + "\n", add_bos=False)
    eval_ids = ids[int(len(ids) * 0.9) :][:129]
    cfg, w = f64.load_checkpoint(ckpt)
    nll, count = 0.0, 0
    for i in range((len(eval_ids) - 1) // 32):
        window = eval_ids[i * 32 : i * 32 + 33]
        logits = f64.forward(cfg, w, window[:-1], schedule=[(0, 4.0)])
        logp = logits - logits.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        nll -= float(logp[np.arange(32), window[1:]].sum())
        count += 32
    reported = next(r["perplexity"] for r in run["eval"] if r["ode_steps"] == 1)
    assert math.isclose(reported, math.exp(nll / count), rel_tol=1e-3)
