"""PNG plots of eval results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    from edgecpm.optional import missing_dependency

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as exc:
        raise missing_dependency(exc, "eval plots") from None
    return plt


def niah_heatmap(result: dict[str, Any], path: Path) -> Path:
    """Accuracy by depth (rows) and context length (columns), the usual NIAH picture."""
    plt = _plt()
    lengths, depths = result["lengths"], result["depths"]
    grid = np.full((len(depths), len(lengths)), np.nan)
    for c in result["cells"]:
        grid[depths.index(c["depth"]), lengths.index(c["length"])] = c["accuracy"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.5 * len(depths)))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"NIAH {result.get('label') or result['backend']}: accuracy {result['accuracy']:.2f}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def haystack_grid(result: dict[str, Any], path: Path) -> Path:
    """The paper's pass/fail grid: task (rows) x depth bucket (columns), share of orderings passed."""
    plt = _plt()
    tasks = result["tasks"]
    n_b = len(result["pass_rate_by_depth"])
    passed = np.zeros((len(tasks), n_b))
    seen = np.zeros((len(tasks), n_b))
    for c in result["cases"]:
        i, j = tasks.index(c["task"]), c["depth"]
        seen[i, j] += 1
        passed[i, j] += c["passed"]
    with np.errstate(invalid="ignore"):
        grid = np.where(seen > 0, passed / np.maximum(seen, 1), np.nan)
    fig, ax = plt.subplots(figsize=(1.5 + 0.55 * n_b, 1.0 + 0.35 * len(tasks)))
    ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i in range(len(tasks)):
        for j in range(n_b):
            if seen[i, j]:
                ax.text(
                    j,
                    i,
                    "pass" if grid[i, j] == 1 else "fail" if grid[i, j] == 0 else f"{grid[i, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                )
    ax.set_xticks(range(n_b), [str(j) for j in range(n_b)])
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_xlabel("depth in the task stream (bucket, 0 = first)")
    ax.set_title(
        f"Task Haystack {result.get('label') or result['backend']}: pass rate {result['pass_rate']:.2f}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def retention_bars(compare: dict[str, Any], path: Path) -> Path:
    """Each variant's score relative to the reference (1.0 = no loss)."""
    plt = _plt()
    rows = compare["variants"]
    labels = [r["label"] for r in rows]
    vals = [r["retention"] if r["retention"] is not None else 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(rows), 3.0))
    ax.bar(range(len(rows)), vals, color=["tab:gray"] + ["tab:blue"] * (len(rows) - 1))
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"retention of {compare['metric']}")
    ax.set_title(f"{compare['suite']}: retention vs {compare['reference']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
