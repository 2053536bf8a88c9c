"""The profiling report's eval section: `edgecpm profile --eval niah` calls `profile_section`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecpm.evals.compare import markdown, run_compare, write_compare
from edgecpm.evals.variants import parse_variant

# short by design: a profile run should stay a few minutes on a small host
PROFILE_NIAH = {"lengths": [512, 1024], "depths": [0.0, 0.5, 1.0], "trials": 1}


def default_variants(model: Any) -> list[str]:
    """Dense llama.cpp (a GGUF) or torch reference, then InfLLM v2 sparse and a 4-bit GGUF."""
    from edgecpm.default_model import resolve_model_path

    is_gguf = resolve_model_path(model).suffix == ".gguf"
    return [("dense=llama.cpp" if is_gguf else "dense=torch"), "sparse-k4=sparse:topk=4,window=128", "q4_0=gguf:q4_0"]


def profile_section(
    model: Any, suites: list[str], out: str | Path, threads: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run each requested suite on the default variants, write its files into `out`; returns the JSON."""
    section: dict[str, Any] = {}
    for suite in suites:
        options = dict(PROFILE_NIAH) if suite == "niah" else {"permutations": 2, "samples": 3, "n_test": 6}
        cmp = run_compare(
            model,
            [parse_variant(v) for v in default_variants(model)],
            suite,
            options,
            work=Path(out) / "eval-work",
            threads=threads,
            progress=progress,
        )
        files = write_compare(cmp, out)
        section[suite] = {"compare": cmp, "markdown": markdown(cmp), "files": {k: str(v) for k, v in files.items()}}
    return section


def add_to_report(
    model: Any, suites: list[str], out: str | Path, threads: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run the section and add it to the report the profiler wrote in `out` (report.json / .md / .html)."""
    import html
    import json

    from edgecpm.evals.compare import _atomic_text

    d = Path(out)
    section = profile_section(model, suites, d, threads, progress)
    summary = {
        s: {
            "reference": v["compare"]["reference"],
            "metric": v["compare"]["metric"],
            "variants": [
                {k: r[k] for k in ("label", "spec", "score", "retention", "wall_s")} for r in v["compare"]["variants"]
            ],
            "files": v["files"],
        }
        for s, v in section.items()
    }
    md = "\n## Long-context fidelity (edgecpm eval)\n\n" + "\n".join(v["markdown"] for v in section.values())
    if (d / "report.md").exists():
        _atomic_text(d / "report.md", (d / "report.md").read_text(encoding="utf-8") + md)
    if (d / "report.json").exists():
        data = json.loads((d / "report.json").read_text(encoding="utf-8"))
        _atomic_text(d / "report.json", json.dumps({**data, "eval": summary}, indent=2, default=str) + "\n")
    page = d / "report.html"
    if page.exists() and "</body>" in (text := page.read_text(encoding="utf-8")):
        imgs = "".join(f'<img src="{Path(v["files"]["png"]).name}" alt="{s} retention">' for s, v in section.items())
        block = f"<h2>Long-context fidelity</h2><pre>{html.escape(md)}</pre>{imgs}\n"
        _atomic_text(page, text.replace("</body>", block + "</body>", 1))
    return summary
