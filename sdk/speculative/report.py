"""The profiling report's speculative-decoding section: a table and a plot of speed-up against k.

Input rows are what `benchmarks/speculative.py` writes with `--out` (one dict per target, task, draft and k).
The report writer calls `section_markdown(rows, out_dir)`; it returns Markdown and writes the PNG beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT_NAME = "speculative_speedup.png"


def speedup_plot(rows: list[dict[str, Any]], out_png: Path) -> Path:
    """Decode speed-up vs k, one line per (target, task, draft); the plain run is the 1.0 line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for r in rows:
        if r["k"]:
            series.setdefault((r["target"], r["task"], r["draft"]), []).append((r["k"], r["decode_speedup"]))
    for (target, task, draft), pts in sorted(series.items()):
        pts.sort()
        ax.plot([k for k, _ in pts], [s for _, s in pts], marker="o", label=f"{draft} · {task} · {target}")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("draft tokens per round (k)")
    ax.set_ylabel("decode speed-up vs plain")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def section_markdown(rows: list[dict[str, Any]], out_dir: Path) -> str:
    if not rows:
        return ""
    png = speedup_plot(rows, Path(out_dir) / PLOT_NAME)
    lines = [
        "## Speculative decoding",
        "",
        f"![decode speed-up vs k]({png.name})",
        "",
        "| target | task | draft | k | decode speed-up | accept len | tok/fwd | lossless |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["k"]:
            lines.append(
                f"| {r['target']} | {r['task']} | {r['draft']} | {r['k']} | {r['decode_speedup']:.2f}× | "
                f"{r['acceptance_length']:.2f} | {r['tokens_per_target_forward']:.2f} | "
                f"{'yes' if r['lossless'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"
