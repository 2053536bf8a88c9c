"""The profiling report's speculative-decoding section: a table and a plot of speed-up against k.

Input rows are what `benchmarks/speculative.py` writes with `--out` (one dict per target, task, draft and k).
`edgecpm profile --speculative ROWS.json` puts them in the report as `report["speculative"]`; the profiling
report then draws `speedup_png(rows)` into plots/ and adds `section_markdown` / `section_html`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT_NAME = "speculative_speedup.png"


ROW_KEYS = ("target", "task", "draft", "k", "decode_speedup", "acceptance_length", "tokens_per_target_forward")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a `benchmarks/speculative.py --out` file, checked enough to draw them."""
    import json

    from edgecpm.errors import EdgecpmError

    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EdgecpmError(f"--speculative {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise EdgecpmError(f"--speculative {path}: expected the list of rows benchmarks/speculative.py --out writes")
    for r in rows:
        keys = ROW_KEYS if r.get("k") else ROW_KEYS[:4]
        missing = [k for k in keys if k not in r]
        if missing:
            raise EdgecpmError(f"--speculative {path}: a row lacks {missing[0]!r}")
        r.setdefault("lossless", False)
    return rows


def speedup_png(rows: list[dict[str, Any]]) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return speedup_plot(rows, Path(d) / PLOT_NAME).read_bytes()


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


HEADER = ["target", "task", "draft", "k", "decode speed-up", "accept len", "tok/fwd", "lossless"]


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            str(r["target"]),
            str(r["task"]),
            str(r["draft"]),
            str(r["k"]),
            f"{r['decode_speedup']:.2f}×",
            f"{r['acceptance_length']:.2f}",
            f"{r['tokens_per_target_forward']:.2f}",
            "yes" if r["lossless"] else "no",
        ]
        for r in rows
        if r["k"]
    ]


def section_markdown(rows: list[dict[str, Any]], out_dir: Path, image: str | None = None) -> str:
    """The section; writes the plot into `out_dir` unless `image` (its path relative to the Markdown) is given."""
    if not rows:
        return ""
    if image is None:
        image = speedup_plot(rows, Path(out_dir) / PLOT_NAME).name
    lines = ["## Speculative decoding", "", f"![decode speed-up vs k]({image})", ""]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(rows)]
    return "\n".join(lines) + "\n"


def section_html(rows: list[dict[str, Any]], png: bytes) -> str:
    import base64
    import html

    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table_rows(rows))
    data = base64.b64encode(png).decode("ascii")
    return (
        f"<h2>Speculative decoding</h2><table><tr>{head}</tr>{body}</table>"
        f"<figure><img id='speculative_speedup' alt='decode speed-up vs k' src='data:image/png;base64,{data}'>"
        "<figcaption>decode speed-up vs k</figcaption></figure>"
    )
