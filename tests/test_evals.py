"""Long-context evals: the t-test pass rule against hand-computed cases and closed forms, task files and the
published-format converter, Task Haystack's prefix KV reuse against fresh prefills, NIAH prompts, retention."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from edgecpm.errors import EdgecpmError
from edgecpm.evals.haystack import depth_bucket, run_task_haystack
from edgecpm.evals.niah import build_prompt
from edgecpm.evals.retention import below_floor, measured_retention
from edgecpm.evals.stats import paired_t_test, regularized_beta, significantly_worse, t_two_sided_p
from edgecpm.evals.tasks import DEMO_SEP, TASK_SEP, bundled_tasks_dir, convert_published_task, load_task, load_tasks
from edgecpm.evals.variants import parse_variant


# --- Student's t: closed forms for 1, 2 and 4 degrees of freedom (independent of the continued fraction) ---
def _p_df1(t: float) -> float:
    return 1 - 2 / math.pi * math.atan(abs(t))


def _p_df2(t: float) -> float:
    return 1 - abs(t) / math.sqrt(2 + t * t)


def _p_df4(t: float) -> float:
    u = abs(t) / math.sqrt(1 + t * t / 4)
    cdf = 0.5 + 3 / 8 * u * (1 - t * t / (12 * (1 + t * t / 4)))
    return 2 * (1 - cdf)


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.132, 2.776, 4.6, 11.0, -1.7])
def test_t_p_value_matches_closed_forms(t):
    assert t_two_sided_p(t, 1) == pytest.approx(_p_df1(t), abs=1e-10)
    assert t_two_sided_p(t, 2) == pytest.approx(_p_df2(t), abs=1e-10)
    assert t_two_sided_p(t, 4) == pytest.approx(_p_df4(t), abs=1e-10)


def test_t_table_critical_values():
    # textbook two-sided 5 % critical values: df 4 -> 2.776, df 9 -> 2.262, df 30 -> 2.042
    for df, crit in ((4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_two_sided_p(crit, df) == pytest.approx(0.05, abs=2e-4)


def test_regularized_beta_identities():
    for x in (0.01, 0.2, 0.5, 0.9):
        assert regularized_beta(1, 1, x) == pytest.approx(x)
        assert regularized_beta(3, 1, x) == pytest.approx(x**3)
        assert regularized_beta(2.5, 0.5, x) == pytest.approx(1 - regularized_beta(0.5, 2.5, 1 - x))


def test_paired_t_hand_computed_not_significant():
    # d = [-1, 0, -1, 0, -2]: mean -0.8, s^2 = 2.8 / 4 = 0.7, t = -0.8 / sqrt(0.7 / 5) = -2.13809, df 4
    r = paired_t_test([1, 2, 3, 4, 5], [2, 2, 4, 4, 7])
    assert r.df == 4 and r.mean_difference == pytest.approx(-0.8)
    assert r.t == pytest.approx(-0.8 / math.sqrt(0.7 / 5))
    assert r.p == pytest.approx(_p_df4(r.t), abs=1e-10)
    assert 0.09 < r.p < 0.11  # between the 10 % and 5 % points of t(4): worse, but not significantly
    assert not significantly_worse([1, 2, 3, 4, 5], [2, 2, 4, 4, 7])


def test_paired_t_hand_computed_fail_and_better():
    ll, st = [0.5, 0.6, 0.4, 0.5, 0.55], [0.8, 0.9, 0.85, 0.8, 0.9]
    # d = [-.3, -.3, -.45, -.3, -.35]: mean -0.34, s^2 = 0.017 / 4, t = -0.34 / sqrt(0.00425 / 5) = -11.662
    r = paired_t_test(ll, st)
    assert r.t == pytest.approx(-0.34 / math.sqrt(0.00425 / 5))
    assert r.p == pytest.approx(_p_df4(r.t), abs=1e-12) and r.p < 0.001
    assert significantly_worse(ll, st)
    assert not significantly_worse(st, ll)  # significantly *better* passes


def test_paired_t_degenerate_cases():
    assert not significantly_worse([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])  # no difference at all: t undefined
    assert math.isnan(paired_t_test([1, 1], [1, 1]).t)
    assert significantly_worse([0.4, 0.5, 0.6], [0.5, 0.6, 0.7])  # always 0.1 worse: t = -inf, p = 0
    assert not significantly_worse([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    with pytest.raises(ValueError):
        paired_t_test([1.0], [2.0])


# --- task files ---
def test_bundled_tasks_and_class_balanced_demos():
    tasks = load_tasks(bundled_tasks_dir())
    assert len(tasks) >= 8
    for t in tasks:
        demos = t.demos(2, 0, seed=0)
        assert sorted(d.label for d in demos) == sorted(list(t.options) * 2)
        assert [d.text for d in demos] == [d.text for d in t.demos(2, 0, seed=0)]  # seeded
    t = tasks[0]
    assert [d.text for d in t.demos(2, 0, 0)] != [d.text for d in t.demos(2, 1, 0)]  # another sample
    assert t.block(t.demos(1, 0, 0)).startswith(t.instruction + DEMO_SEP)


def test_task_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"name": "x", "instruction": "i", "options": ["a", "b"]})
        + "\n"
        + json.dumps({"split": "test", "text": "q:", "label": "c"})
        + "\n"
    )
    with pytest.raises(EdgecpmError, match="not one of the task's options"):
        load_task(bad)
    bad.write_text(json.dumps({"split": "test", "text": "q:", "label": "a"}) + "\n")
    with pytest.raises(EdgecpmError, match="header"):
        load_task(bad)
    with pytest.raises(EdgecpmError, match="per class"):
        load_task_ok(tmp_path).demos(3, 0, 0)


def load_task_ok(tmp_path):
    p = tmp_path / "ok.jsonl"
    rows = [{"name": "ok", "instruction": "i", "options": ["a", "b"]}]
    rows += [{"split": s, "text": f"x{i}:", "label": "ab"[i % 2]} for i, s in enumerate(["train"] * 4 + ["test"] * 2)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_task(p)


def _published_task(root):
    d = root / "boolq_like"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps(
            {
                "name": "boolq_like",
                "task_type": "classification",
                "options": ["no", "yes"],
                "instruction": "Answer yes or no.",
                "demonstration_prompt": "{passage}\nquestion: {question}\nanswer: {label}",
                "inference_prompt": "{passage}\nquestion: {question}\nanswer:",
            }
        )
    )
    for k in range(2):
        (d / f"train_{k}.jsonl").write_text(
            "".join(
                json.dumps({"passage": f"p{k}{i}", "question": f"q{k}{i}", "label": "yes" if i % 2 else "no"}) + "\n"
                for i in range(4)
            )
        )
    (d / "test.jsonl").write_text(json.dumps({"passage": "pt", "question": "qt", "label": "yes"}) + "\n")
    return d


def test_convert_published_task(tmp_path):
    src = _published_task(tmp_path)
    recs = convert_published_task(src)
    assert recs[0] == {"name": "boolq_like", "instruction": "Answer yes or no.", "options": ["no", "yes"]}
    assert recs[1] == {"split": "train", "text": "p00\nquestion: q00\nanswer:", "label": "no", "pool": 0}
    assert recs[-1] == {"split": "test", "text": "pt\nquestion: qt\nanswer:", "label": "yes"}
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "edgecpm", "eval", "convert-tasks", str(tmp_path), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    task = load_task(out / "boolq_like.jsonl")
    assert {d.pool for d in task.demos(2, 1, 0)} == {1}  # sample 1 draws from the published pool train_1
    assert task.demos(1, 0, 0)[0].demo.endswith("answer: " + task.demos(1, 0, 0)[0].label)


def test_convert_rejects_non_task_folder(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "edgecpm", "eval", "convert-tasks", str(tmp_path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.startswith("edgecpm: error:") and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


# --- Task Haystack on a tiny model: prefix KV reuse must equal fresh full prefills ---
@pytest.fixture(scope="module")
def tiny_torch(tiny_tied):
    import edgecpm

    return edgecpm.load(tiny_tied, backend="torch")


def _fresh_accuracy(model, task, prefix_ids, tests):
    """Independent of the KV reuse: every query (and every option) is one fresh prefill of the whole prompt.
    The published rank rule: first-token log-probability, or whole-option likelihood when first tokens collide."""
    tok = model.tokenizer
    options = [tok.encode(" " + o, add_bos=False) for o in task.options]
    first_tokens_distinct = len({o[0] for o in options}) == len(options)
    hits = 0
    for e in tests:
        ids = prefix_ids + tok.encode(DEMO_SEP + e.text, add_bos=False)
        if first_tokens_distinct:
            scores = [model.backend.prefill(ids)[o[0]] for o in options]
        else:
            scores = []
            for o in options:
                logits = model.backend.prefill(ids + o, all_logits=True)[len(ids) - 1 : -1].astype(np.float64)
                logp = logits - logits.max(-1, keepdims=True)
                logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
                scores.append(logp[np.arange(len(o)), o].sum())
        hits += task.options[int(np.argmax(scores))] == e.label
    return hits / len(tests)


def test_task_haystack_kv_reuse_matches_fresh_prefill(tiny_torch):
    tasks = load_tasks(bundled_tasks_dir())[:3]
    r = run_task_haystack(tiny_torch, tasks, n_shot=1, permutations=2, samples=2, n_test=3, seed=7, progress=False)
    tok = tiny_torch.tokenizer
    enc = lambda s: tok.encode(s, add_bos=False)  # noqa: E731
    bos = [tok.bos_id] if tok.add_bos and tok.bos_id is not None else []
    by_name = {t.name: t for t in tasks}
    for case in r["cases"][:3]:
        order = [by_name[n] for n in r["orderings"][case["ordering"]]]
        for s in range(2):
            stream = bos + enc(order[0].block(order[0].demos(1, s, 7)))
            for t in order[1:]:
                stream += enc(TASK_SEP + t.block(t.demos(1, s, 7)))
            task = by_name[case["task"]]
            stream += enc(TASK_SEP + task.instruction)
            assert case["lifelong"][s] == pytest.approx(
                _fresh_accuracy(tiny_torch, task, stream, task.test[:3]), abs=1e-3
            )
            single = bos + enc(task.block(task.demos(1, s, 7)))
            assert case["single"][s] == pytest.approx(
                _fresh_accuracy(tiny_torch, task, single, task.test[:3]), abs=1e-3
            )
        assert case["passed"] == (not significantly_worse(case["lifelong"], case["single"]))
    again = run_task_haystack(tiny_torch, tasks, n_shot=1, permutations=2, samples=2, n_test=3, seed=7, progress=False)
    assert again["cases"] == r["cases"] and again["orderings"] == r["orderings"]  # reproducible with a seed
    assert sorted(r["pass_rate_by_depth"]) == ["0", "1", "2"]


def test_depth_bucket():
    assert [depth_bucket(i, 16) for i in range(16)] == [i // 2 for i in range(16)]
    assert [depth_bucket(i, 4) for i in range(4)] == [0, 1, 2, 3]


# --- NIAH prompt ---
def test_niah_prompt_length_and_depth(tiny_torch):
    tok = tiny_torch.tokenizer
    filler = tok.encode("lorem ipsum dolor sit amet " * 50, add_bos=False)
    where = []
    for depth in (0.0, 0.5, 1.0):
        prompt, answer = build_prompt(tok, filler, 300, depth, 12345, start=3)
        assert len(prompt) + len(answer) == 300
        text = tok.decode(prompt)
        assert text.count("12345") == 2 and tok.decode(answer).strip() == "12345"
        where.append(text.index("The pass key is"))
        if depth == 0.0:
            assert text.index("quiz you about it.") < where[-1] < text.index("quiz you about it.") + 40
        if depth == 1.0:
            assert " ".join(text.split()).endswith("is the pass key. What is the pass key? The pass key is")
    assert where[0] < where[1] < where[2]
    with pytest.raises(EdgecpmError, match="too short"):
        build_prompt(tok, filler, 20, 0.5, 12345, start=0)


def test_cli_niah_bad_depth_is_one_line_error(tiny_tied, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecpm",
            "eval",
            "niah",
            str(tiny_tied),
            "--depths",
            "1.5",
            "--lengths",
            "128",
            "--out",
            str(tmp_path / "o"),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "depths" in r.stderr
    assert not (tmp_path / "o" / "niah.json").exists()


# --- variants and the planner's floor ---
def test_parse_variants():
    assert parse_variant("k4=sparse:topk=4,window=128").sparse == {"topk": 4, "window_size": 128}
    assert parse_variant("sparse:topk=1,window=0").label == "sparse:topk=1,window=0"
    v = parse_variant("q4=gguf:q4_0")
    assert (v.label, v.fmt, v.quant, v.backend) == ("q4", "gguf", "q4_0", "llama.cpp")
    with pytest.raises(EdgecpmError, match="unknown variant"):
        parse_variant("tensorrt")


def test_retention_floor():
    cmp = {
        "variants": [
            {"label": "d", "kind": "backend", "quant": None, "retention": 1.0},
            {"label": "k4", "kind": "sparse", "quant": None, "retention": 0.9},
            {"label": "k1", "kind": "sparse", "quant": None, "retention": 0.1},
            {"label": "q4", "kind": "export", "quant": "q4_0", "retention": 0.7},
        ]
    }
    m = measured_retention(cmp)
    assert m == {"quant": {"q4_0": 0.7}, "sparse": 0.9}
    assert below_floor(m, "q4_0", False, 0.8).startswith("measured retention of q4_0 is 0.70")
    assert below_floor(m, "q8_0", False, 0.8) is None  # not measured: not refused
    assert below_floor(m, "q8_0", True, 0.95) is not None and below_floor(m, "q8_0", True, 0.85) is None
    assert below_floor(m, "q4_0", False, None) is None


def test_planner_skips_a_quant_below_the_retention_floor():
    import edgecpm

    free = edgecpm.plan("minicpm4-0.5b", "apple-m2", context=2048)
    chosen = free.choice.quant.name
    floored = edgecpm.plan(
        "minicpm4-0.5b", "apple-m2", context=2048, min_retention=0.9, retention={"quant": {chosen: 0.5}, "sparse": None}
    )
    hit = [c for c in floored.candidates if c.quant.name == chosen]
    assert hit and all(not c.fits and "below the floor 0.90" in c.rejected for c in hit)
    assert floored.choice is not None and floored.choice.quant.name != chosen
