"""Profiling report: `report.json` (the data), `report.md` and a self-contained `report.html` with PNG plots.

The HTML embeds its plots as base64 PNG data URIs so the single file can be mailed or attached to an issue;
the same PNGs are written under `plots/` for the Markdown report. Plots (matplotlib, Agg backend): decode
tokens/s vs context (measured, predicted before and after calibration), predicted vs measured decode, and
peak memory vs the predicted footprint. Every file is written under a temporary name and renamed at the end;
an interrupted run leaves no partial report.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import os
from pathlib import Path
from typing import Any

PLOTS = ("tokens_vs_context", "predicted_vs_measured", "memory")
MB = 1e6


def _fig_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def make_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """The three report plots as PNG bytes."""
    from edgecpm.optional import require

    matplotlib = require("matplotlib", "the profiling report's plots")

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cal = report["calibration"]["backends"]
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    out: dict[str, bytes] = {}

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for color, (name, entry) in zip(colors, cal.items()):
        preds = entry["predictions"]
        ctx = [p["context"] for p in preds]
        ax.plot(ctx, [p["measured_decode"] for p in preds], "o-", color=color, label=f"{name} measured (p10 step)")
        ax.plot(
            ctx, [p["predicted_decode_default"] for p in preds], ":", color=color, label=f"{name} predicted (default)"
        )
        ax.plot(
            ctx,
            [p["predicted_decode_calibrated"] for p in preds],
            "--",
            color=color,
            label=f"{name} predicted (calibrated)",
        )
        dense = [p.get("predicted_decode_dense_calibrated") for p in preds]
        if any(d is not None for d in dense):  # an InfLLM v2 model: the dense-attention curve beside it
            ax.plot(ctx, dense, "-.", color=color, alpha=0.6, label=f"{name} predicted, dense attention")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title("Decode speed vs context")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out["tokens_vs_context"] = _fig_png(fig)

    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    hi = 0.0
    for color, (name, entry) in zip(colors, cal.items()):
        m = [p["measured_decode"] for p in entry["predictions"]]
        d = [p["predicted_decode_default"] for p in entry["predictions"]]
        c = [p["predicted_decode_calibrated"] for p in entry["predictions"]]
        ax.scatter(m, d, marker="x", color=color, label=f"{name} default coefficients")
        ax.scatter(m, c, marker="o", color=color, label=f"{name} calibrated")
        h = [p.get("predicted_decode_held_out") for p in entry["predictions"]]
        if any(x is not None for x in h):
            ax.scatter(
                m,
                [x if x is not None else float("nan") for x in h],
                marker="^",
                color=color,
                facecolors="none",
                label=f"{name} held out",
            )
        hi = max(hi, *m, *d, *c)
    line = [0, hi * 1.1]
    ax.plot(line, line, "k-", lw=0.8, label="predicted = measured")
    ax.fill_between(line, [v * 0.65 for v in line], [v * 1.35 for v in line], color="grey", alpha=0.15, label="±35 %")
    ax.set_xlabel("measured decode tokens/s (p10 step)")
    ax.set_ylabel("predicted decode tokens/s")
    ax.set_title("Predicted vs measured")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out["predicted_vs_measured"] = _fig_png(fig)

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    names = [r["backend"] for r in report["backends"]]
    peak = [r["peak_rss_bytes"] / MB for r in report["backends"]]
    base = [r["baseline_rss_bytes"] / MB for r in report["backends"]]
    pred = [cal[n]["predictions"][-1]["predicted_memory_default"] / MB for n in names]
    x = range(len(names))
    ax.bar([i - 0.27 for i in x], base, width=0.27, label="RSS before load", color="lightgrey")
    ax.bar(list(x), peak, width=0.27, label="peak RSS", color="tab:blue")
    ax.bar([i + 0.27 for i in x], pred, width=0.27, label="predicted footprint (default)", color="tab:orange")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("MB")
    ax.set_title(f"Memory at context {report['settings']['contexts'][-1]}")
    ax.legend(fontsize=7)
    out["memory"] = _fig_png(fig)
    if report.get("speculative"):  # rows of benchmarks/speculative.py (edgecpm profile --speculative)
        from edgecpm.speculative.report import speedup_png

        out["speculative_speedup"] = speedup_png(report["speculative"])
    return out


# ---------------------------------------------------------------------------------------------------------


def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by the Markdown and HTML writers."""
    backends = [
        [
            r["backend"],
            r["quant"],
            _f(r["load_seconds"], 2),
            _f(r["peak_rss_bytes"] / MB, 0),
            _f(r["fidelity"].get("top1_agreement"), 4) if r["fidelity"].get("top1_agreement") is not None else "n/a",
            _f(r["fidelity"]["perplexity"], 3),
            _f(r["fidelity"].get("perplexity_delta"), 4),
        ]
        for r in report["backends"]
    ]
    speed = []
    for name, entry in report["calibration"]["backends"].items():
        for p in entry["predictions"]:
            held = p.get("predicted_decode_held_out")
            err = held / p["measured_decode"] - 1 if held and p["measured_decode"] else None
            speed.append(
                [
                    name,
                    str(p["context"]),
                    _f(p["measured_prefill"]),
                    _f(p["predicted_prefill_default"]),
                    _f(p["predicted_prefill_calibrated"]),
                    _f(p.get("measured_decode_median"), 2),
                    _f(p["measured_decode"], 2),
                    _f(p["predicted_decode_default"], 2),
                    _f(p["predicted_decode_calibrated"], 2),
                    _f(held, 2),
                    "n/a" if err is None else f"{err:+.0%}",
                ]
            )
    coeffs = []
    for name, entry in report["calibration"]["backends"].items():
        for label in ("default", "calibrated"):
            c = entry[label]
            coeffs.append(
                [
                    name,
                    label,
                    _f(c["bandwidth_efficiency"], 3),
                    _f(c["compute_efficiency"], 3),
                    _f(c.get("attention_efficiency"), 3),
                    f"{c['layer_overhead_s'] * 1e6:.1f}",
                    _f(c["runtime_bytes"] / MB, 0),
                ]
            )
    prof = report["host"]["profile"]
    probe = report["host"]["probe"]
    host = [
        ["CPU", html.unescape(prof["cpu"])],
        ["usable cores", str(prof["cpu_cores"])],
        ["ISA", ", ".join(prof["isa"]) or "n/a"],
        ["RAM (GiB)", _f(prof["memory_gib"]["value"], 1)],
        ["GPU", prof["gpu"] or "none"],
        ["read bandwidth (GB/s)", _f(probe.get("bandwidth", {}).get("read_gbs"), 2)],
        ["copy bandwidth (GB/s)", _f(probe.get("bandwidth", {}).get("copy_gbs"), 2)],
        ["fp32 GEMM (GFLOPS)", _f(probe.get("compute", {}).get("fp32_gflops"), 1)],
        ["bf16 GEMM (GFLOPS)", _f(probe.get("compute", {}).get("bf16_gflops"), 1)],
        ["threads used", str(report["threads"])],
        ["why", probe.get("threads_reason", "n/a")],
        ["read method", probe.get("bandwidth", {}).get("read_method", "n/a")],
        ["host id", probe["host_id"]],
    ]
    return [
        ("Host", ["", ""], host),
        (
            "Backends: load, memory, fidelity",
            ["backend", "quant", "load s", "peak RSS MB", "top-1 vs torch", "perplexity", "ppl delta"],
            backends,
        ),
        (
            "Speed: measured vs predicted (tokens/s)",
            [
                "backend",
                "context",
                "prefill",
                "pred. default",
                "pred. calibrated",
                "decode (median step)",
                "decode (p10 step)",
                "pred. default",
                "pred. calibrated (in-sample)",
                "pred. held out",
                "held-out error",
            ],
            speed,
        ),
        (
            "Cost-model coefficients",
            ["backend", "set", "bandwidth eff.", "compute eff.", "attention eff.", "layer overhead µs", "runtime MB"],
            coeffs,
        ),
    ]


def _intro(report: dict[str, Any]) -> list[str]:
    m, s = report["model"], report["settings"]
    cal = report["calibration"]
    lines = [
        f"Model: {m['name'] or m['path']} ({m['kind']}, {m['parameters'] / 1e6:.0f}M parameters, "
        f"{m['layers']} layers). Created {report['created']} in {report['duration_seconds']} s.",
        f"Protocol: prefill the first N tokens of {s['text']} for N in {s['contexts']}, then "
        f"{s['decode_tokens']} greedy decode steps (decode tokens/s = 1 / median step time, and 1 / the "
        f"10th-percentile step, the machine's speed without other processes' time slices, which calibrates); "
        f"fidelity on "
        f"{s['fidelity_tokens']} tokens against the torch reference; peak RSS sampled every 10 ms.",
        "Predictions: roofline cost model (decode = bytes moved per token / bandwidth; prefill = FLOPs / "
        "compute). 'default' uses rule-of-thumb coefficients; 'calibrated' uses the coefficients fitted on "
        "all these measurements (in-sample: it shows the fit, not an independent check); 'held out' predicts "
        "each context with coefficients fitted on the other contexts only, so its error is an honest one.",
    ]
    errs = {n: e.get("held_out_decode_error") for n, e in cal["backends"].items()}
    shown = [f"{n} {e:.0%}" for n, e in errs.items() if e is not None]
    if shown:
        lines.append(f"Held-out decode prediction error (median over contexts): {', '.join(shown)}.")
    over = [n for n, e in cal["backends"].items() if (e["calibrated"].get("bandwidth_efficiency") or 0) > 1.0]
    if over:
        lines.append(
            f"Warning: calibrated bandwidth efficiency above 1.0 for {', '.join(over)}: the probe measured less "
            "bandwidth than decode used (a busy machine during the probe?); rerun on an idle machine."
        )
    if cal.get("stored"):
        lines.append(f"Calibration stored in {cal['stored']}; `edgecpm plan MODEL --device host` uses it.")
    return lines + phone_intro(report)


def render_markdown(report: dict[str, Any]) -> str:
    out = ["# edgecpm profiling report", ""] + [line + "\n" for line in _intro(report)]
    for title, header, rows in _tables(report):
        out += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    out.append("## Plots\n")
    out += [f"![{name}](plots/{name}.png)\n" for name in PLOTS]
    if report.get("speculative"):
        from edgecpm.speculative.report import section_markdown

        out.append(section_markdown(report["speculative"], Path("plots"), image="plots/speculative_speedup.png"))
    return "\n".join(out)


def render_html(report: dict[str, Any], pngs: dict[str, bytes]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<title>edgecpm profiling report</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;"
        "padding:3px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}"
        "figure{display:inline-block;margin:0.5em}img{max-width:100%}</style></head><body>",
        "<h1>edgecpm profiling report</h1>",
    ]
    parts += [f"<p>{esc(line)}</p>" for line in _intro(report)]
    for title, header, rows in _tables(report):
        parts.append(f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    parts.append("<h2>Plots</h2>")
    for name in PLOTS:
        data = base64.b64encode(pngs[name]).decode("ascii")
        parts.append(
            f"<figure><img id='{name}' alt='{name}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{esc(name.replace('_', ' '))}</figcaption></figure>"
        )
    if report.get("speculative"):
        from edgecpm.speculative.report import section_html

        parts.append(section_html(report["speculative"], pngs["speculative_speedup"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: dict[str, Any], out: Path) -> list[str]:
    """Write report.json, report.md, report.html and plots/*.png into `out`; returns the written paths.

    Each file goes to a temporary name first and all are renamed together (Ctrl-C/SIGTERM held during the
    renames), so an earlier report in `out` stays whole; on any failure the temporaries and any folder this
    call created are removed, and a full disk or read-only folder is one `EdgecpmError` naming `out`.
    """
    from edgecpm.interrupts import signals_deferred, write_error

    out = Path(out)
    if out.exists() and not out.is_dir():
        from edgecpm.errors import EdgecpmError

        raise EdgecpmError(f"--out {out} exists and is not a directory")
    pngs = make_plots(report)
    files = {
        out / "report.json": None,
        out / "report.md": render_markdown(report).encode(),
        out / "report.html": render_html(report, pngs).encode(),
    }
    files.update({out / "plots" / f"{name}.png": data for name, data in pngs.items()})
    report_files = sorted(str(p) for p in files)
    files[out / "report.json"] = (json.dumps({**report, "files": report_files}, indent=2, default=str) + "\n").encode()
    created = [d for d in (out, out / "plots") if not d.exists()]
    temps: list[tuple[Path, Path]] = []
    try:
        (out / "plots").mkdir(parents=True, exist_ok=True)
        for path, data in files.items():
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            temps.append((tmp, path))  # before writing: a half-written temporary is removed too
            tmp.write_bytes(data)
        with signals_deferred():
            for tmp, path in temps:
                os.replace(tmp, path)
        created = []
    except OSError as exc:
        fault = write_error(exc, out)
        if fault is None:
            raise
        raise fault from None
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        for d in reversed(created):  # folders this call made, now empty again
            with contextlib.suppress(OSError):
                d.rmdir()
    return report_files


def phone_intro(report: dict[str, Any]) -> list[str]:
    """The report's protocol line for imported phone measurements (report.py adds it when present)."""
    if not report.get("phone"):
        return []
    lines = []
    for label, p in report["phone"].items():
        ph = p.get("phone", {})
        lines.append(
            f"{label}: measured on {ph.get('manufacturer', '?')} {ph.get('model', '?')} ({ph.get('hardware', '?')}, "
            f"Android SDK {ph.get('sdk_int', '?')}) by the edgecpm Android app, imported from {p.get('file')}; "
            "decode tokens/s is the mean over the decode steps (the runner's first-to-last-token time), "
            "peak RSS is the app process's VmHWM; there is no fidelity check on the phone."
        )
    return lines
