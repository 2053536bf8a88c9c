"""`edgecpm profile`: measure a model on this host with every backend that can run it, then report.

Per backend: load time, prefill tokens/s and decode tokens/s at several context lengths (prefill the first N
tokens of real text, then decode greedily; decode speed is 1 / the median step, and
1 / the 10th-percentile step, which calibrates), peak RSS while it runs, and
fidelity against the torch reference on the same tokens (top-1 agreement, perplexity delta). Beside each
measurement sits the cost model's prediction with its rule-of-thumb coefficients; the measurements then
calibrate this host's coefficients (stored, reused by `plan --device host`) and the report shows the
calibrated predictions too. Backends come from the registry at run time: torch always, llama.cpp for a
`.gguf`, an artifact's own runtime for an artifact.
"""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecpm.device_profiles.host import probe, profile_from_probe
from edgecpm.device_profiles.host_store import save_coefficients
from edgecpm.errors import EdgecpmError
from edgecpm.planning.calibration import fit_coefficients
from edgecpm.planning.cost_model import FORMAT_QUANTS, QuantSpec, compute_key, default_coefficients, predict
from edgecpm.planning.planner import ModelInfo, resolve_model
from edgecpm.progress import progress_bar

SCHEMA = "edgecpm.profile/1"
DEFAULT_CONTEXTS = (128, 512, 1024)
DEFAULT_DECODE_TOKENS = 16
DEFAULT_FIDELITY_TOKENS = 256


class RssSampler:
    """Peak resident set size of this process while a block runs (sampled every 10 ms from /proc).

    Timed decode loops run `paused()`: a sampling thread waking every 10 ms slowed single-threaded torch
    decode steps by up to 2x on a loaded 2-core machine (context switches, GIL hand-offs), so there the RSS is
    sampled between steps by the caller instead. The process's `ru_maxrss` is checked at the end as well.
    """

    def __init__(self) -> None:
        self.peak = current_rss()
        self._maxrss0 = _ru_maxrss()
        self._stop = threading.Event()
        self._active = threading.Event()
        self._active.set()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._active.wait()
            if self._stop.wait(0.01):
                break
            if self._active.is_set():
                self.sample()

    def sample(self) -> None:
        self.peak = max(self.peak, current_rss())

    @contextmanager
    def paused(self) -> Iterator[RssSampler]:
        self.sample()
        self._active.clear()
        try:
            yield self
        finally:
            self.sample()
            self._active.set()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._active.set()
        self._thread.join()
        self.sample()
        maxrss = _ru_maxrss()
        if maxrss > self._maxrss0:  # the process peak rose during this block: that peak is this block's
            self.peak = max(self.peak, maxrss)


def _ru_maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def default_text() -> str:
    """Real English text bundled with the package (WikiText-2 validation excerpt)."""
    from importlib import resources

    return resources.files("edgecpm").joinpath("data/wikitext2_excerpt.txt").read_text(encoding="utf-8")


def backends_for(info: ModelInfo, requested: Sequence[str] | None) -> list[str]:
    """The backends that can open this model here, torch (the fidelity reference) last.

    Freed torch tensors stay in the process heap, so a backend measured after torch would see its peak RSS
    inflated by them; the C++ runtimes go first.
    """
    from edgecpm.backends.registry import available_backends
    from edgecpm.exporters.manifest import FORMAT_BACKENDS

    registered = available_backends()
    if info.kind == "artifact":
        runnable = [FORMAT_BACKENDS[info.fixed_format]]
    elif info.kind == "gguf":
        runnable = ["llama.cpp", "torch"]
    else:
        runnable = ["torch"]
    runnable = [b for b in runnable if b in registered]
    if requested:
        bad = [b for b in requested if b not in runnable]
        if bad:
            raise EdgecpmError(
                f"backend {bad[0]!r} cannot run this model here; available for it: {', '.join(runnable) or 'none'}"
            )
        runnable = [b for b in runnable if b in requested]
    if not runnable:
        raise EdgecpmError("no installed backend can run this model on this host")
    return runnable


def measured_quant(info: ModelInfo, backend: str, dtype: str | None) -> QuantSpec:
    if backend == "torch":
        return FORMAT_QUANTS["hf"]["bf16" if dtype in ("bf16", "bfloat16") else "f32"]
    assert info.fixed_quant is not None
    return info.fixed_quant


def _log_softmax_stats(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """(perplexity of `targets` under row-wise `logits`, argmax per row)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    logz = np.log(np.exp(x).sum(axis=1))
    nll = logz - x[np.arange(len(targets)), targets]
    return float(np.exp(nll.mean())), logits.argmax(axis=1)


def _time_backend(
    backend: Any, ids: list[int], contexts: Sequence[int], decode_tokens: int, bar: Any, rss: RssSampler
) -> list[dict[str, Any]]:
    rows = []
    for c in contexts:
        t0 = time.perf_counter()
        logits = backend.prefill(ids[:c])
        t_prefill = time.perf_counter() - t0
        rss.sample()
        steps = []
        token = int(np.argmax(logits))
        for _ in range(decode_tokens):
            t1 = time.perf_counter()
            out = backend.decode([token])
            steps.append(time.perf_counter() - t1)
            token = int(np.argmax(out[-1]))
        median = statistics.median(steps)
        best = fast_step(steps)
        rows.append(
            {
                "context": c,
                "prefill_seconds": t_prefill,
                "prefill_tokens_per_s": c / t_prefill,
                "decode_step_seconds_median": median,
                "decode_step_seconds_p10": best,
                "decode_tokens_per_s": 1.0 / median,
                "decode_tokens_per_s_p10": 1.0 / best,
                "decode_tokens_per_s_mean": len(steps) / sum(steps),
            }
        )
        bar.update(1)
    return rows


def fast_step(steps: Sequence[float]) -> float:
    """The 10th-percentile step time: the machine's own speed, with other processes' time slices filtered out.

    On a shared machine the median mostly measures the neighbours (here decode steps of one run varied 2x);
    a preempted step is only ever slower, so a low percentile is the stable estimate of what the hardware does.
    """
    ordered = sorted(steps)
    return ordered[int(0.1 * (len(ordered) - 1))]


def layer_overhead_probe(config: Any, threads: int | None, dtype: str | None, steps: int = 24) -> float:
    """Per-layer dispatch cost of the torch backend: decode a tiny model of the same depth (bytes negligible)."""
    import torch

    from edgecpm.backends.torch_backend import TorchBackend, resolve_dtype
    from edgecpm.model import Model

    tiny = replace(
        config,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        vocab_size=256,
        rope_scaling=None,
        lightning=None,
        tie_word_embeddings=True,
        sparse=None,
        layers=tuple(replace(s, attention="dense") for s in config.layers),
    )
    torch.manual_seed(0)
    model = Model(tiny).to(resolve_dtype(dtype or "float32")).eval()
    backend = TorchBackend(model, threads=threads)
    backend.prefill(list(range(8)))
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        backend.decode([i % 256])
        times.append(time.perf_counter() - t0)
    return fast_step(times[4:]) / config.num_layers


def llamacpp_overhead_probe(num_layers: int, threads: int | None, steps: int = 24) -> float | None:
    """Per-layer fixed cost of the llama.cpp backend (graph build, thread sync, Python glue per call).

    A tiny random checkpoint of the same depth is exported to an f32 GGUF and decoded: its bytes are
    negligible, so a step is all overhead. None when the GGUF exporter is not installed.
    """
    import tempfile

    from edgecpm.api import load
    from edgecpm.exporters.registry import run_export
    from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

    try:
        import edgecpm.exporters.gguf_exporter  # noqa: F401
    except ImportError:
        return None
    ckpt = cached_checkpoint(
        SyntheticSpec(
            hidden_size=64, intermediate_size=128, num_layers=num_layers, num_heads=4, num_kv_heads=2, shards=1, seed=11
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_export(ckpt, "gguf", Path(tmp) / "tiny", quant="f32", progress=False)
        loaded = load(Path(tmp) / "tiny", backend="llama.cpp", threads=threads)
        backend = loaded.backend
        backend.prefill(list(range(3, 11)))
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            backend.decode([3 + i % 200])
            times.append(time.perf_counter() - t0)
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    return fast_step(times[4:]) / num_layers


@dataclass(frozen=True)
class ProfileSettings:
    """What `profile` measures and how (every keyword of `edgecpm.profile`)."""

    contexts: tuple[int, ...] = DEFAULT_CONTEXTS
    decode_tokens: int = DEFAULT_DECODE_TOKENS
    fidelity_tokens: int = DEFAULT_FIDELITY_TOKENS
    backends: tuple[str, ...] | None = None
    threads: int | None = None
    dtype: str | None = None
    text: str | None = None
    calibrate: bool = True
    reference: Any = None
    progress: bool = True

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ProfileSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise EdgecpmError(f"unknown profile option {unknown[0]!r}; expected one of {', '.join(sorted(known))}")
        values = dict(options)
        if values.get("contexts") is not None:
            values["contexts"] = tuple(sorted({int(c) for c in values["contexts"]}))
        if values.get("backends") is not None:
            values["backends"] = tuple(values["backends"])
        return cls(**values)


def profile(model: Any = None, device: str = "host", out: Any = None, **options: Any) -> dict[str, Any]:
    """Measure `model` (default: the bundled SmolLM2-135M) on this host; write report.{html,json,md} to `out`.

    Stages: check the request, probe the host, time each backend, fidelity against the torch reference,
    per-layer overheads, calibration (held-out errors included), the report.
    """
    settings = ProfileSettings.from_options(options)
    info = _check_request(model, device, out, settings)
    names = backends_for(info, settings.backends)
    started = time.time()
    steps = 2 + len(names) * (len(settings.contexts) + 2)
    with progress_bar(total=steps, desc="profiling", enabled=settings.progress, unit="step") as bar:
        bar.set_postfix_str("probing host")
        host = probe(measure=True)
        threads = settings.threads or host["threads"]
        hprofile = profile_from_probe(host)
        bar.update(1)
        results, ids, reference_logits = _measure_backends(info, names, threads, settings, bar)
        if reference_logits is None and settings.reference is not None:
            bar.set_postfix_str("reference")
            reference_logits = _reference_logits(settings.reference, info, ids, threads, settings.fidelity_tokens)
        _add_fidelity(results, ids, reference_logits, settings.fidelity_tokens)
        bar.set_postfix_str("calibrating")
        overhead = _overheads(info, names, threads, settings.dtype)
        bar.update(1)
    calibration = _calibrate(
        info, hprofile, host, results, settings.contexts, overhead, settings.dtype, settings.calibrate
    )
    report = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_seconds": round(time.time() - started, 1),
        "model": info.to_dict(),
        "host": {"profile": hprofile.to_dict(), "probe": host},
        "threads": threads,
        "settings": {
            "contexts": list(settings.contexts),
            "decode_tokens": settings.decode_tokens,
            "fidelity_tokens": settings.fidelity_tokens,
            "dtype": settings.dtype or "float32",
            "text": "custom" if settings.text is not None else "WikiText-2 validation excerpt (bundled)",
        },
        "backends": results,
        "calibration": calibration,
    }
    if out is not None:
        from edgecpm.profiling.report import write_report

        report["files"] = write_report(report, Path(out))
    return report


def _check_request(model: Any, device: str, out: Any, settings: ProfileSettings) -> ModelInfo:
    """Every check that can fail before a second is spent measuring."""
    if device != "host":
        raise EdgecpmError(
            f"profile measures this machine: use --device host (got {device!r}); "
            "use `edgecpm plan` to predict other devices"
        )
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise EdgecpmError(f"--out {out} exists and is not a directory")
    if out is not None:  # fail before a minute of measuring, not after
        from edgecpm.interrupts import check_writable
        from edgecpm.optional import require

        check_writable(out, out)
        require("matplotlib", "the profiling report's plots")
    contexts = settings.contexts
    if not contexts or contexts[0] < 1:
        raise EdgecpmError(f"contexts must be positive token counts, got {list(contexts)}")
    if settings.decode_tokens < 2 or settings.fidelity_tokens < 2:
        raise EdgecpmError("decode_tokens and fidelity_tokens must be at least 2")
    if isinstance(model, str) and model.lower().startswith("minicpm4-") and not Path(model).exists():
        raise EdgecpmError(f"{model!r} is a shape preset without weights: profile a checkpoint, .gguf or artifact")
    info = resolve_model(model)
    if max(contexts) + settings.decode_tokens > info.config.max_position_embeddings:
        raise EdgecpmError(
            f"context {max(contexts)} + {settings.decode_tokens} decode tokens exceeds the model's "
            f"{info.config.max_position_embeddings} positions"
        )
    return info


def _measure_backends(
    info: ModelInfo, names: Sequence[str], threads: int, settings: ProfileSettings, bar: Any
) -> tuple[list[dict[str, Any]], list[int], np.ndarray | None]:
    """Load, time and score each backend in turn; returns the results, the token ids and torch's logits."""
    from edgecpm.api import load

    results: list[dict[str, Any]] = []
    ids: list[int] = []
    reference_logits: np.ndarray | None = None
    for name in names:
        bar.set_postfix_str(f"{name}: loading")
        gc.collect()
        with RssSampler() as rss:
            baseline = current_rss()
            t0 = time.perf_counter()
            dtype = settings.dtype if name == "torch" else None
            loaded = load(info.path, backend=name, threads=threads, dtype=dtype)
            load_s = time.perf_counter() - t0
            bar.update(1)
            if not ids:
                ids = _profiling_ids(loaded.tokenizer, settings)
            bar.set_postfix_str(f"{name}: timing")
            with rss.paused():
                rows = _time_backend(loaded.backend, ids, settings.contexts, settings.decode_tokens, bar, rss)
            bar.set_postfix_str(f"{name}: fidelity")
            logits = np.asarray(loaded.backend.prefill(ids[: settings.fidelity_tokens], all_logits=True))
            bar.update(1)
            close = getattr(loaded.backend, "close", None)
            del loaded
            if close is not None:
                close()
            gc.collect()
        ppl, top1 = _log_softmax_stats(logits[:-1], np.asarray(ids[1 : settings.fidelity_tokens]))
        if name == "torch":
            reference_logits = logits
        results.append(
            {
                "backend": name,
                "quant": measured_quant(info, name, settings.dtype).name,
                "load_seconds": load_s,
                "peak_rss_bytes": rss.peak,
                "baseline_rss_bytes": baseline,
                "timings": rows,
                "perplexity": ppl,
                "_top1": top1,
            }
        )
    return results, ids, reference_logits


def _profiling_ids(tokenizer: Any, settings: ProfileSettings) -> list[int]:
    ids = tokenizer.encode(settings.text if settings.text is not None else default_text())
    need = max(max(settings.contexts), settings.fidelity_tokens + 1) + settings.decode_tokens
    if len(ids) < need:
        raise EdgecpmError(f"the profiling text has {len(ids)} tokens; {need} are needed")
    return ids


def _reference_logits(reference: Any, info: ModelInfo, ids: list[int], threads: int, n: int) -> np.ndarray:
    """Logits of the torch reference (an artifact's source checkpoint) on the profiled tokens."""
    from edgecpm.api import load

    ref = load(reference, backend="torch", threads=threads)
    if ref.config.vocab_size != info.config.vocab_size:
        raise EdgecpmError(
            f"reference {reference} has a vocabulary of {ref.config.vocab_size}; the "
            f"profiled model has {info.config.vocab_size}"
        )
    return np.asarray(ref.backend.prefill(ids[:n], all_logits=True))


def _add_fidelity(
    results: list[dict[str, Any]], ids: list[int], reference_logits: np.ndarray | None, fidelity_tokens: int
) -> None:
    """Top-1 agreement and perplexity delta of each backend against the torch reference, when there is one."""
    if reference_logits is not None:
        ref_ppl, ref_top1 = _log_softmax_stats(reference_logits[:-1], np.asarray(ids[1:fidelity_tokens]))
        for r in results:
            r["fidelity"] = {
                "reference": "torch",
                "tokens": fidelity_tokens - 1,
                "top1_agreement": float(np.mean(r["_top1"] == ref_top1)),
                "perplexity": r["perplexity"],
                "reference_perplexity": ref_ppl,
                "perplexity_delta": r["perplexity"] - ref_ppl,
            }
    else:
        for r in results:
            r["fidelity"] = {
                "reference": None,
                "perplexity": r["perplexity"],
                "note": "no torch reference can open this model (an artifact: pass reference=<source checkpoint>)",
            }
    for r in results:
        r.pop("_top1")


def _overheads(info: ModelInfo, names: Sequence[str], threads: int, dtype: str | None) -> dict[str, float | None]:
    """Per-layer fixed cost of each measured backend, from a tiny model of the same depth."""
    config = info.config
    return {
        "torch": layer_overhead_probe(config, threads, dtype) if "torch" in names else None,
        "llama.cpp": llamacpp_overhead_probe(config.num_layers, threads) if "llama.cpp" in names else None,
    }


def _fit_rows(
    rows: Sequence[dict[str, Any]],
    config: Any,
    q: QuantSpec,
    name: str,
    bw: float,
    peak: Any,
    overhead_s: float | None,
    runtime: float,
    attention_peak: Any,
) -> Any:
    """This host's coefficients fitted on the measured `rows` (one per context)."""
    return fit_coefficients(
        config,
        q,
        name,
        bw,
        peak,
        [(row["context"], row["decode_step_seconds_p10"]) for row in rows],
        [(row["context"], row["prefill_seconds"]) for row in rows],
        overhead_s,
        runtime,
        attention_peak,
    )


def held_out_error(preds: Sequence[dict[str, Any]]) -> float | None:
    """Median relative decode error of leave-one-context-out predictions (None with a single context)."""
    errs = [
        abs(p["predicted_decode_held_out"] - p["measured_decode"]) / p["measured_decode"]
        for p in preds
        if p.get("predicted_decode_held_out") and p.get("measured_decode")
    ]
    return round(statistics.median(errs), 4) if errs else None


def _calibrate(
    info: ModelInfo,
    hprofile: Any,
    host: dict[str, Any],
    results: list[dict[str, Any]],
    contexts: Sequence[int],
    overhead: dict[str, float | None],
    dtype: str | None,
    store: bool,
) -> dict[str, Any]:
    """Predictions before and after fitting this host's coefficients; stores them unless `store` is False."""
    config = info.config
    bw, _ = hprofile.effective_bandwidth()
    fitted: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {"stored": False, "bandwidth_gbs": bw, "layer_overhead_s": overhead, "backends": {}}
    for r in results:
        name = r["backend"]
        q = measured_quant(info, name, dtype)
        rows = r["timings"]
        before = default_coefficients(name, "cpu")
        peak = hprofile.peak_compute(compute_key(hprofile, name, q))
        kv_est = predict(config, q, name, hprofile, max(contexts), max(contexts), before)
        # what the process held beyond weights, KV and buffers; the interpreter baseline counts for torch only
        # (a C++ runtime does not need Python, and the baseline may hold the previous backend's leftovers)
        own = r["peak_rss_bytes"] - (0 if name == "torch" else r["baseline_rss_bytes"])
        runtime = max(0.0, own - kv_est.weights_bytes - kv_est.kv_bytes - kv_est.activation_bytes)
        fit_args = (config, q, name, bw, peak, overhead.get(name), runtime, hprofile.peak_compute("fp32_gflops"))
        after = _fit_rows(rows, *fit_args)
        preds = []
        for i, row in enumerate(rows):
            c = row["context"]
            p0 = predict(config, q, name, hprofile, c, c, before)
            p1 = predict(config, q, name, hprofile, c, c, after)
            # held out: coefficients fitted without this context, so its error is not 0 by construction
            others = rows[:i] + rows[i + 1 :]
            p_out = predict(config, q, name, hprofile, c, c, _fit_rows(others, *fit_args)) if others else None
            preds.append(
                {
                    "predicted_decode_held_out": None if p_out is None else p_out.decode_tokens_per_s,
                    "predicted_prefill_held_out": None if p_out is None else p_out.prefill_tokens_per_s,
                    "context": c,
                    "measured_decode": row["decode_tokens_per_s_p10"],
                    "measured_decode_median": row["decode_tokens_per_s"],
                    "predicted_decode_default": p0.decode_tokens_per_s,
                    "predicted_decode_calibrated": p1.decode_tokens_per_s,
                    # InfLLM v2 models: the same backend with dense attention, so the report shows both curves
                    "predicted_decode_dense_calibrated": p1.decode_tokens_per_s_dense
                    if config.has_sparse_layers
                    else None,
                    "measured_prefill": row["prefill_tokens_per_s"],
                    "predicted_prefill_default": p0.prefill_tokens_per_s,
                    "predicted_prefill_calibrated": p1.prefill_tokens_per_s,
                    "predicted_memory_bytes": p1.total_bytes,
                    "predicted_memory_default": p0.total_bytes,
                }
            )
        out["backends"][name] = {
            "quant": q.name,
            "default": before.to_dict(),
            "calibrated": after.to_dict(),
            "predictions": preds,
            "held_out_decode_error": held_out_error(preds),
        }
        fitted[f"{name}/{q.name}"] = {
            "coefficients": after.to_dict(),
            "quant": q.name,
            "model": config.name or Path(info.path or "").name,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    if store and fitted:
        out["stored"] = str(save_coefficients(host, fitted))
    return out
