"""`edgecpm profile BUNDLE --import FILE`: the Android app's benchmark JSON merged into a phone's report.

The app (android_demo, Benchmark screen) runs the profiler's fixed prompts (the bundled WikiText-2 excerpt cut
at the context lengths the bundle holds, shipped in the bundle's manifest) through ExecuTorch's runner on the
phone and writes `edgecpm.phone-benchmark/1` JSON: per prompt the runner's prompt/generated token counts and
timestamps, plus load time and the app's peak RSS. Here those numbers are set beside the cost model's
predictions for the chosen device profile, the device's ExecuTorch coefficients are fitted on them
(`fit_coefficients`) and stored under the device's calibration id (used by `plan --device NAME`), and the
report in OUT (report.json/.md/.html) is written or updated: an earlier import for the same device keeps its
other entries, a report of another device is refused.

Phone decode speed is the mean over the decode steps (the runner reports start and end only), not the
10th-percentile step the host profiler uses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edgecpm.device_profiles.host_store import device_calibration_id
from edgecpm.errors import EdgecpmError

SCHEMA = "edgecpm.phone-benchmark/1"
BACKEND = "executorch"


def read_benchmark(path: str | Path) -> dict[str, Any]:
    """The app's JSON, checked field by field (a malformed file is a one-line error)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgecpmError(f"benchmark file {p} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgecpmError(f"benchmark file {p} is not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise EdgecpmError(f"{p} is not an {SCHEMA} file (written by the Android app's benchmark screen)")
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise EdgecpmError(f"{p} has no benchmark runs")
    for i, r in enumerate(runs):
        for key in ("context", "prompt_tokens", "generated_tokens", "prefill_ms", "decode_ms"):
            if not isinstance(r.get(key), (int, float)) or isinstance(r.get(key), bool):
                raise EdgecpmError(f"{p}: run {i} has no numeric {key!r}")
        if r["generated_tokens"] < 2 or r["decode_ms"] <= 0 or r["prefill_ms"] <= 0 or r["prompt_tokens"] < 1:
            raise EdgecpmError(
                f"{p}: run {i} generated {r['generated_tokens']} tokens in {r['decode_ms']} ms; "
                "at least 2 tokens and positive times are needed"
            )
    for key in ("bundle", "memory"):
        if not isinstance(data.get(key), dict):
            raise EdgecpmError(f"{p} has no {key!r} section")
    return data


def _rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs as the profiler's timing rows; context is the KV length the runner actually prefilled."""
    rows = []
    for r in sorted(runs, key=lambda r: r["prompt_tokens"]):
        step = r["decode_ms"] / 1000.0 / (r["generated_tokens"] - 1)
        prefill_s = r["prefill_ms"] / 1000.0
        rows.append(
            {
                "context": int(r["prompt_tokens"]),
                "prefill_seconds": prefill_s,
                "prefill_tokens_per_s": r["prompt_tokens"] / prefill_s,
                "decode_step_seconds_median": step,
                "decode_step_seconds_p10": step,
                "decode_tokens_per_s": 1.0 / step,
                "decode_tokens_per_s_p10": 1.0 / step,
                "decode_tokens_per_s_mean": 1.0 / step,
                "ttft_seconds": r.get("ttft_ms", 0.0) / 1000.0,
                "generated_tokens": int(r["generated_tokens"]),
            }
        )
    return rows


def import_phone_benchmark(
    file: str | Path, model: str | Path | None, device: str | None, out: str | Path, calibrate: bool = True
) -> dict[str, Any]:
    """Merge the benchmark `file` measured with bundle `model` on `device` into the report in `out`."""
    from edgecpm.device_profiles.catalog import load_profile
    from edgecpm.device_profiles.host_store import save_coefficients
    from edgecpm.planning.calibration import fit_coefficients
    from edgecpm.planning.cost_model import compute_key, default_coefficients, predict
    from edgecpm.planning.planner import resolve_model
    from edgecpm.profiling.report import write_report

    data = read_benchmark(file)
    if model is None:
        raise EdgecpmError(
            "--import needs the bundle (or ExecuTorch artifact) the phone ran: edgecpm profile BUNDLE --import FILE"
        )
    name = device or data.get("device_profile")
    if not name:
        raise EdgecpmError(f"{file} was measured without a device profile: pass --device NAME (see edgecpm devices)")
    profile = load_profile(name)
    if profile.name == "host":
        raise EdgecpmError("phone measurements cannot go into the host's report: pass --device with a phone profile")
    info = resolve_model(model)
    if info.kind != "artifact" or info.fixed_format != BACKEND or info.fixed_quant is None:
        raise EdgecpmError(f"{model} is not an ExecuTorch bundle or artifact; pass the folder the phone ran")
    files = (_manifest_extra(Path(str(info.path))).get("android") or {}).get("files") or {}
    want = (files.get("model") or {}).get("sha256")
    got = data["bundle"].get("model_sha256")
    if want and got != want:
        raise EdgecpmError(
            f"{file} was measured with another program (sha256 {str(got)[:12]}…) than {model} ({want[:12]}…)"
        )
    q = info.fixed_quant
    config = info.config
    rows = _rows(data["runs"])
    bw, _ = profile.effective_bandwidth()
    if bw is None:
        raise EdgecpmError(f"device profile {profile.name} has no memory bandwidth to predict with")
    before = default_coefficients(BACKEND, profile.engine)
    peak = profile.peak_compute(compute_key(profile, BACKEND, q))
    largest = max(r["context"] for r in rows)
    est = predict(config, q, BACKEND, profile, largest, largest, before)
    peak_rss = int(data["memory"].get("peak_rss_bytes") or 0)
    runtime = max(0.0, peak_rss - est.weights_bytes - est.kv_bytes - est.activation_bytes) if peak_rss > 0 else None
    after = fit_coefficients(
        config,
        q,
        BACKEND,
        bw,
        peak,
        [(r["context"], r["decode_step_seconds_p10"]) for r in rows],
        [(r["context"], r["prefill_seconds"]) for r in rows],
        None,
        runtime,
        profile.peak_compute("fp32_gflops"),
    )
    preds = []
    for r in rows:
        c = r["context"]
        p0 = predict(config, q, BACKEND, profile, c, c, before)
        p1 = predict(config, q, BACKEND, profile, c, c, after)
        preds.append(
            {
                "context": c,
                "measured_decode": r["decode_tokens_per_s"],
                "measured_decode_median": r["decode_tokens_per_s"],
                "predicted_decode_default": p0.decode_tokens_per_s,
                "predicted_decode_calibrated": p1.decode_tokens_per_s,
                "measured_prefill": r["prefill_tokens_per_s"],
                "predicted_prefill_default": p0.prefill_tokens_per_s,
                "predicted_prefill_calibrated": p1.prefill_tokens_per_s,
                "predicted_memory_bytes": p1.total_bytes,
                "predicted_memory_default": p0.total_bytes,
            }
        )
    label = f"{BACKEND}/{q.name}"
    hid = device_calibration_id(profile.name)
    stored: Any = False
    if calibrate:
        stored = str(
            save_coefficients(
                {"host_id": hid, "device_profile": profile.name},
                {
                    label: {
                        "coefficients": after.to_dict(),
                        "quant": q.name,
                        "model": config.name or Path(str(info.path)).name,
                        "measured_at": data.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "source": "edgecpm profile --import (Android app benchmark)",
                    }
                },
            )
        )
    entry = {
        "backend": label,
        "quant": q.name,
        "load_seconds": float(data.get("load_ms") or 0.0) / 1000.0,
        "peak_rss_bytes": peak_rss,
        "baseline_rss_bytes": 0,
        "timings": rows,
        "perplexity": None,
        "fidelity": {"reference": None, "perplexity": None, "note": "measured on the phone: no fidelity check"},
    }
    phone = {
        "device_profile": profile.name,
        "phone": data.get("phone", {}),
        "bundle": data["bundle"],
        "settings": data.get("settings", {}),
        "created": data.get("created"),
        "file": str(file),
        "text": [r.get("text", "") for r in data["runs"]],
    }
    report = _merge(
        Path(out),
        profile,
        hid,
        info,
        label,
        entry,
        phone,
        {"quant": q.name, "default": before.to_dict(), "calibrated": after.to_dict(), "predictions": preds},
        bw,
        stored,
        data,
    )
    report["files"] = write_report(report, Path(out))
    return report


def _manifest_extra(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "edgecpm.json").read_text(encoding="utf-8")).get("extra", {})
    except (OSError, json.JSONDecodeError):
        return {}


def _merge(
    out: Path,
    profile: Any,
    hid: str,
    info: Any,
    label: str,
    entry: dict[str, Any],
    phone: dict[str, Any],
    calibration: dict[str, Any],
    bw: float,
    stored: Any,
    data: dict[str, Any],
) -> dict[str, Any]:
    from edgecpm.profiling.profiler import SCHEMA as REPORT_SCHEMA

    old: dict[str, Any] | None = None
    path = out / "report.json"
    if out.exists() and not out.is_dir():
        raise EdgecpmError(f"--out {out} exists and is not a directory")
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EdgecpmError(f"{path} is not JSON ({exc}); choose another --out") from None
        if old.get("schema") != REPORT_SCHEMA or old.get("host", {}).get("probe", {}).get("host_id") != hid:
            raise EdgecpmError(f"{path} is a report of another device; choose another --out for {profile.name}")
    settings = data.get("settings", {})
    contexts = sorted({r["context"] for r in entry["timings"]})
    report = old or {
        "schema": REPORT_SCHEMA,
        "model": info.to_dict(),
        "host": {"profile": profile.to_dict(), "probe": {"host_id": hid, "device_profile": profile.name}},
        "threads": settings.get("threads"),
        "backends": [],
        "calibration": {"stored": False, "bandwidth_gbs": bw, "layer_overhead_s": {}, "backends": {}},
        "phone": {},
    }
    report["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["duration_seconds"] = 0.0
    report["settings"] = {
        "contexts": contexts,
        "decode_tokens": settings.get("decode_tokens"),
        "fidelity_tokens": 0,
        "dtype": "n/a",
        "text": settings.get("text", "the profiler's fixed text"),
    }
    report["backends"] = [b for b in report["backends"] if b["backend"] != label] + [entry]
    report["calibration"]["backends"][label] = calibration
    report["calibration"]["layer_overhead_s"][label] = None
    if stored:
        report["calibration"]["stored"] = stored
    report.setdefault("phone", {})[label] = phone
    return report
