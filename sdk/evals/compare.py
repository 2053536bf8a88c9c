"""One suite on several variants of one model: each variant's score and its retention vs the first (reference)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgecpm.errors import EdgecpmError
from edgecpm.evals.variants import Variant, open_variant

SUITES = ("niah", "task-haystack")
METRIC = {"niah": "accuracy", "task-haystack": "pass_rate"}
SECONDARY = {"niah": "mean_logprob", "task-haystack": "lifelong_accuracy"}


def run_suite(suite: str, model: Any, options: dict[str, Any], progress: bool, label: str) -> dict[str, Any]:
    if suite == "niah":
        from edgecpm.evals.niah import run_niah

        return run_niah(model, progress=progress, label=label, **options)
    if suite == "task-haystack":
        from edgecpm.evals.haystack import run_task_haystack
        from edgecpm.evals.tasks import bundled_tasks_dir, load_tasks

        opts = dict(options)
        tasks = load_tasks(opts.pop("tasks", None) or bundled_tasks_dir())
        return run_task_haystack(model, tasks, progress=progress, label=label, **opts)
    raise EdgecpmError(f"unknown eval suite {suite!r}; expected one of {', '.join(SUITES)}")


def context_needed(suite: str, options: dict[str, Any]) -> int:
    """The llama.cpp context a suite needs (NIAH: its longest haystack; Task Haystack: the model's limit)."""
    if suite == "niah":
        from edgecpm.evals.niah import DEFAULT_LENGTHS

        return max(options.get("lengths") or DEFAULT_LENGTHS) + 16
    return 8192


def retention(score: float | None, reference: float | None) -> float | None:
    if score is None or reference is None or reference == 0:
        return None
    return round(score / reference, 4)


def run_compare(
    model_path: Any,
    variants: Sequence[Variant],
    suite: str = "niah",
    options: dict[str, Any] | None = None,
    work: str | Path = "eval-compare",
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run `suite` on every variant (the first is the reference) and return the comparison."""
    if suite not in SUITES:
        raise EdgecpmError(f"unknown eval suite {suite!r}; expected one of {', '.join(SUITES)}")
    if not variants:
        raise EdgecpmError("compare needs at least one variant")
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise EdgecpmError(f"variant labels repeat: {labels}")
    options = dict(options or {})
    work = Path(work)
    rows = []
    for v in variants:
        t0 = time.perf_counter()
        model = open_variant(model_path, v, work, context_needed(suite, options), threads, progress)
        load_s = time.perf_counter() - t0
        try:
            result = run_suite(suite, model, options, progress, v.label)
        finally:
            close = getattr(model.backend, "close", None)
            if close is not None:
                close()
        rows.append(
            {
                "label": v.label,
                "spec": v.spec,
                "kind": v.kind,
                "backend": v.backend,
                "quant": v.quant,
                "format": v.fmt,
                "sparse": v.sparse or None,
                "score": result[METRIC[suite]],
                "secondary": result[SECONDARY[suite]],
                "load_s": round(load_s, 2),
                "wall_s": result["wall_s"],
                "result": result,
            }
        )
    ref = rows[0]
    for r in rows:
        r["retention"] = retention(r["score"], ref["score"])
    return {
        "suite": suite,
        "metric": METRIC[suite],
        "secondary_metric": SECONDARY[suite],
        "reference": ref["label"],
        "model": str(model_path or "smollm2"),
        "options": options,
        "variants": rows,
    }


def markdown(compare: dict[str, Any]) -> str:
    """The comparison as a markdown table (one report section)."""
    m, s = compare["metric"], compare["secondary_metric"]
    lines = [
        f"### {compare['suite']}: retention vs `{compare['reference']}`",
        "",
        f"| variant | spec | backend | {m} | {s} | retention | eval wall s | load s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in compare["variants"]:
        ret = "n/a" if r["retention"] is None else f"{r['retention']:.2f}"
        lines.append(
            f"| {r['label']} | `{r['spec']}` | {r['backend']} | {r['score']:.3f} | {r['secondary']:.3f} | "
            f"{ret} | {r['wall_s']:.1f} | {r['load_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_compare(compare: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """eval-<suite>.json / .md / retention PNG and one plot per variant, each written atomically."""
    from edgecpm.evals.plots import haystack_grid, niah_heatmap, retention_bars

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    stem = f"eval-{compare['suite']}"
    files = {"json": d / f"{stem}.json", "md": d / f"{stem}.md", "png": d / f"{stem}-retention.png"}
    _atomic_text(files["json"], json.dumps(compare, indent=2, default=str))
    _atomic_text(files["md"], markdown(compare))
    _atomic_plot(retention_bars, compare, files["png"])
    plot = niah_heatmap if compare["suite"] == "niah" else haystack_grid
    for r in compare["variants"]:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in r["label"])
        files[r["label"]] = _atomic_plot(plot, r["result"], d / f"{stem}-{safe}.png")
    return files


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _atomic_plot(fn: Any, data: dict[str, Any], path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp.png")
    fn(data, tmp)
    tmp.replace(path)
    return path
