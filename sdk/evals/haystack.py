"""Task Haystack (Lifelong ICL, Xu, Ye & Ren 2024) as published, scored by option likelihood.

Lifelong ICL: the task blocks (instruction + `n_shot` class-balanced demonstrations per class) are joined into
one stream in a random order; to test a task, its instruction is repeated with no demonstrations after the
stream ("recall" mode) and each test input follows. Single-task ICL, the baseline: that task's block alone.
Both use the same demonstration sample s, so for each (task, ordering) the Lifelong ICL accuracies over the
samples are paired with the Single-task ICL ones; the case fails iff the paired t-test says Lifelong ICL is
significantly worse (p < 0.05, t < 0). Pass rate = share of cases that do not fail.

Scoring is the published `rank` method: the option whose first token has the highest log-probability after the
query wins; when two options share a first token, whole options are ranked by total log-likelihood instead.
Prefix KV reuse: each (ordering, sample) stream is prefilled once; every test query is decoded on top of it and
rolled back with `truncate`, so the stream is never re-evaluated.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgecpm.errors import EdgecpmError
from edgecpm.evals.scoring import log_softmax
from edgecpm.evals.stats import ALPHA, paired_t_test, significantly_worse
from edgecpm.evals.tasks import DEMO_SEP, TASK_SEP, Task
from edgecpm.progress import progress_bar

DEPTH_BUCKETS = 8  # the paper's needle-in-a-haystack plots bin the test task's position into 8 depths


class _Scorer:
    """Tokenization (cached) and option scoring from the backend's current state."""

    def __init__(self, model: Any) -> None:
        self.backend, self.tok = model.backend, model.tokenizer
        self._cache: dict[str, list[int]] = {}
        self.bos = [self.tok.bos_id] if self.tok.add_bos and self.tok.bos_id is not None else []

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = list(self.tok.encode(text, add_bos=False))
        return self._cache[text]

    def options(self, task: Task) -> list[list[int]]:
        return [self.ids(" " + o) for o in task.options]

    def predict(self, task: Task, text: str) -> int:
        """Index of the predicted option for one query, leaving the backend as it found it."""
        base = self.backend.n_past
        opts = self.options(task)
        last = np.asarray(self.backend.decode(self.ids(DEMO_SEP + text))[-1])
        firsts = [o[0] for o in opts]
        if len(set(firsts)) == len(firsts):
            choice = int(np.argmax(last[firsts]))
        else:
            after_query = self.backend.n_past
            first_logp = log_softmax(last)
            totals = []
            for o in opts:
                total = float(first_logp[o[0]])
                if len(o) > 1:
                    rows = log_softmax(np.asarray(self.backend.decode(o[:-1])))
                    total += float(rows[np.arange(len(o) - 1), o[1:]].sum())
                    self.backend.truncate(after_query)
                totals.append(total)
            choice = int(np.argmax(totals))
        self.backend.truncate(base)
        return choice

    def accuracy(self, task: Task, tests: Sequence[Any]) -> float:
        hits = sum(task.options[self.predict(task, e.text)] == e.label for e in tests)
        return hits / len(tests)


def _check(tasks: Sequence[Task], n_shot: int, permutations: int, samples: int) -> None:
    if len(tasks) < 2:
        raise EdgecpmError("Task Haystack needs at least two tasks")
    if n_shot < 1 or permutations < 1:
        raise EdgecpmError("Task Haystack needs n_shot >= 1 and at least one ordering")
    if samples < 2:
        raise EdgecpmError("the paired t-test needs at least two demonstration samples (--samples >= 2)")


def run_task_haystack(
    model: Any,
    tasks: Sequence[Task],
    n_shot: int = 2,
    permutations: int = 3,
    samples: int = 5,
    n_test: int | None = None,
    seed: int = 0,
    progress: bool = True,
    label: str | None = None,
) -> dict[str, Any]:
    """Lifelong ICL vs Single-task ICL on `model` (a `LoadedModel`); returns the JSON-ready result."""
    _check(tasks, n_shot, permutations, samples)
    sc = _Scorer(model)
    tests = {t.name: list(t.test[:n_test] if n_test else t.test) for t in tasks}
    demos = {(t.name, s): t.demos(n_shot, s, seed) for t in tasks for s in range(samples)}
    n_ctx = getattr(model.backend, "n_ctx", None)
    n_queries = sum(len(v) for v in tests.values())
    started = time.perf_counter()
    single: dict[tuple[str, int], float] = {}
    lifelong: dict[tuple[str, int, int], float] = {}
    orders: list[list[str]] = []
    stream_tokens: list[int] = []
    total = samples * n_queries * (1 + permutations)
    with progress_bar(total, f"task-haystack {label or model.backend.name}", enabled=progress, unit="query") as bar:
        for s in range(samples):  # Single-task ICL: the task's own block as the prefix
            for t in tasks:
                prefix = sc.bos + sc.ids(t.block(demos[(t.name, s)]))
                model.backend.prefill(prefix)
                single[(t.name, s)] = sc.accuracy(t, tests[t.name])
                bar.update(len(tests[t.name]))
        rng = random.Random(f"orders:{seed}")
        for p in range(permutations):
            order = list(tasks)
            rng.shuffle(order)
            orders.append([t.name for t in order])
            for s in range(samples):
                stream = sc.bos + sc.ids(order[0].block(demos[(order[0].name, s)]))
                for t in order[1:]:
                    stream += sc.ids(TASK_SEP + t.block(demos[(t.name, s)]))
                stream_tokens.append(len(stream))
                if n_ctx is not None and len(stream) + 256 > n_ctx:
                    raise EdgecpmError(
                        f"the task stream has {len(stream)} tokens; the backend's context is {n_ctx} "
                        "(use fewer tasks or shots)"
                    )
                model.backend.prefill(stream)  # once per (ordering, sample); every query reuses it
                n0 = model.backend.n_past
                for t in order:
                    model.backend.decode(sc.ids(TASK_SEP + t.instruction))  # recall: instruction, no demos
                    lifelong[(t.name, p, s)] = sc.accuracy(t, tests[t.name])
                    model.backend.truncate(n0)
                    bar.update(len(tests[t.name]))
    return _summarize(
        tasks,
        orders,
        single,
        lifelong,
        samples,
        stream_tokens,
        label,
        model,
        seed,
        n_shot,
        time.perf_counter() - started,
    )


def depth_bucket(position: int, n_tasks: int, buckets: int = DEPTH_BUCKETS) -> int:
    """The paper's depth bin of the task at `position` (0 = first in the stream) among n_tasks."""
    return min(buckets - 1, position * min(buckets, n_tasks) // n_tasks)


def _summarize(
    tasks: Sequence[Task],
    orders: list[list[str]],
    single: dict,
    lifelong: dict,
    samples: int,
    stream_tokens: list[int],
    label: str | None,
    model: Any,
    seed: int,
    n_shot: int,
    wall: float,
) -> dict[str, Any]:
    n_buckets = min(DEPTH_BUCKETS, len(tasks))
    cases = []
    for p, order in enumerate(orders):
        for pos, name in enumerate(order):
            ll = [lifelong[(name, p, s)] for s in range(samples)]
            st = [single[(name, s)] for s in range(samples)]
            r = paired_t_test(ll, st)
            cases.append(
                {
                    "task": name,
                    "ordering": p,
                    "position": pos,
                    "depth": depth_bucket(pos, len(order)),
                    "lifelong": [round(x, 4) for x in ll],
                    "single": [round(x, 4) for x in st],
                    "t": None if r.t != r.t else round(r.t, 4),
                    "p": None if r.p != r.p else round(r.p, 6),
                    "passed": not significantly_worse(ll, st),
                }
            )
    by_depth = {}
    for b in range(n_buckets):
        in_b = [c for c in cases if c["depth"] == b]
        by_depth[str(b)] = None if not in_b else round(sum(c["passed"] for c in in_b) / len(in_b), 4)
    mean = lambda xs: round(float(np.mean(xs)), 4)  # noqa: E731
    return {
        "suite": "task-haystack",
        "label": label,
        "backend": model.backend.name,
        "model": str(model.path),
        "seed": seed,
        "n_shot": n_shot,
        "samples": samples,
        "orderings": orders,
        "alpha": ALPHA,
        "tasks": [t.name for t in tasks],
        "stream_tokens": stream_tokens,
        "pass_rate": round(sum(c["passed"] for c in cases) / len(cases), 4),
        "pass_rate_by_depth": by_depth,
        "lifelong_accuracy": mean(list(lifelong.values())),
        "single_accuracy": mean(list(single.values())),
        "wall_s": round(wall, 2),
        "cases": cases,
    }
