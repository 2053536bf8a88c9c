"""The planner: a pure function of (model config, device profile, request) -> `Plan`.

It enumerates every (backend, format, quantization) the device runs, predicts memory and tokens/s for each
with the roofline cost model, rejects what does not fit the app's memory budget, and picks:

* among fitting candidates whose predicted decode reaches `min_decode_tokens_per_s` (default 20), the most
  faithful quantization (ties: faster, then the device's preferred backend order);
* if none reaches it, the fastest fitting candidate;
* if nothing fits, no choice: the plan says why and what would fit (a shorter context, a smaller model, a
  ternary checkpoint, a device with more memory).

The JSON form (`Plan.to_dict`, schema `edgecpm.plan/1`) is documented in docs/planner.md.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgecpm.config import ModelConfig, is_preset, preset_config
from edgecpm.device_profiles.catalog import load_profile
from edgecpm.device_profiles.profile import DeviceProfile
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.formats import (
    EXPORT_FORMATS,
    FORMAT_BACKENDS,
    facts,
    format_report,
    refusal,
    runs_sparse,
    runtime_refusal,
)
from edgecpm.planning.cost_model import (
    BACKEND_FORMAT,
    FORMAT_QUANTS,
    Prediction,
    QuantSpec,
    default_coefficients,
    kv_cache_bytes,
    kv_read_bytes,
    predict,
)
from edgecpm.speculative.planning import choose_draft

SCHEMA = "edgecpm.plan/1"
DEFAULT_CONTEXT = 4096
GIB = 2**30


@dataclass
class ModelInfo:
    """What the planner knows about MODEL: its config and whether its format/quant are already fixed."""

    config: ModelConfig
    kind: str  # preset, checkpoint, gguf, artifact, config
    path: str | None = None
    fixed_format: str | None = None
    fixed_quant: QuantSpec | None = None
    file_bytes: int | None = None
    source: Any = field(default=None, repr=False, compare=False)  # weights, for the ternary-exportable check

    @property
    def ternary(self) -> bool:
        return any(s.ternary for s in self.config.layers)

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "name": c.name or (Path(self.path).name if self.path else ""),
            "kind": self.kind,
            "path": self.path,
            "architecture": c.architecture,
            "parameters": c.parameter_count(),
            "layers": c.num_layers,
            "hidden_size": c.hidden_size,
            "kv_heads": c.num_kv_heads,
            "head_dim": c.head_dim,
            "vocab_size": c.vocab_size,
            "ternary": self.ternary,
            "max_position_embeddings": c.max_position_embeddings,
            "sparse_config": None if c.sparse is None else dict(c.sparse.__dict__),
            "fixed_format": self.fixed_format,
            "fixed_quant": None if self.fixed_quant is None else self.fixed_quant.name,
        }


@dataclass
class Candidate:
    backend: str
    format: str
    quant: QuantSpec
    prediction: Prediction
    fits: bool
    rejected: str | None = None
    refused: str | None = None  # the exporter's own reason when it would refuse this format/quant

    def to_dict(self) -> dict[str, Any]:
        p = self.prediction
        return {
            "backend": self.backend,
            "format": self.format,
            "quant": self.quant.name,
            "fits": self.fits,
            "total_bytes": int(p.total_bytes),
            "weights_bytes": int(p.weights_bytes),
            "decode_tokens_per_s": None if p.decode_tokens_per_s is None else round(p.decode_tokens_per_s, 2),
            "prefill_tokens_per_s": None if p.prefill_tokens_per_s is None else round(p.prefill_tokens_per_s, 2),
            "rejected": self.rejected,
        }


@dataclass
class Plan:
    model: ModelInfo
    device: DeviceProfile
    request: dict[str, Any]
    fits: bool
    choice: Candidate | None
    attention: dict[str, Any]
    threads: int
    draft: dict[str, Any] | None  # edgecpm.speculative.planning.choose_draft
    draft_reason: str
    candidates: list[Candidate]
    reason: str
    suggestions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    export_losses: dict[str, list[str]] = field(default_factory=dict)  # per format: what the model would lose

    @property
    def threads_reason(self) -> str:
        """Why this many threads: asked for, the host's measured probe, or the device profile's cores."""
        if self.request.get("threads"):
            return "as requested"
        return self.device.extra.get("threads_reason") or f"the profile's {self.device.threads} performance cores"

    def to_dict(self) -> dict[str, Any]:
        budget = self.device.memory_budget_bytes
        bw, basis = self.device.effective_bandwidth()
        choice = None
        if self.choice is not None:
            c, p = self.choice, self.choice.prediction
            choice = {
                "backend": c.backend,
                "format": c.format,
                "quant": c.quant.name,
                "kv_bytes_per_element": c.quant.kv_bytes,
                "threads": self.threads,
                "threads_reason": self.threads_reason,
                "attention": self.attention,
                "draft": self.draft,
                "draft_reason": self.draft_reason,
                "memory": {
                    "weights_bytes": int(p.weights_bytes),
                    "kv_bytes": int(p.kv_bytes),
                    "runtime_bytes": int(p.runtime_bytes),
                    "activation_bytes": int(p.activation_bytes),
                    "total_bytes": int(p.total_bytes),
                    "budget_bytes": int(budget),
                },
                "predicted": {
                    "decode_tokens_per_s": _r(p.decode_tokens_per_s),
                    "decode_tokens_per_s_dense": _r(p.decode_tokens_per_s_dense),
                    "prefill_tokens_per_s": _r(p.prefill_tokens_per_s),
                    "prefill_bound": p.prefill_bound,
                    "decode_bytes_per_token": None
                    if p.decode_bytes_per_token is None
                    else int(p.decode_bytes_per_token),
                    "context": self.request["context"],
                    "prompt_tokens": self.request["prompt_tokens"],
                    "coefficients": p.coefficients.to_dict(),
                    "notes": p.notes,
                },
            }
        return {
            "schema": SCHEMA,
            "model": self.model.to_dict(),
            "device": {
                "name": self.device.name,
                "display_name": self.device.display_name,
                "engine": self.device.engine,
                "memory_bytes": int(self.device.memory_gib.value * GIB),
                "app_share": self.device.app_share.value,
                "memory_budget_bytes": int(budget),
                "bandwidth_gbs": _r(bw),
                "bandwidth_basis": basis,
                "backends": list(self.device.backends),
            },
            "request": self.request,
            "fits": self.fits,
            "reason": self.reason,
            "choice": choice,
            "candidates": [c.to_dict() for c in self.candidates],
            "suggestions": self.suggestions,
            "warnings": self.warnings,
            "export_losses": self.export_losses,
        }


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(float(x), nd)


# ---------------------------------------------------------------------------------------------------------
# Model resolution


def _quant_from_file(name: str, fmt: str, config: ModelConfig, file_bytes: int) -> QuantSpec:
    """A fixed file's quant: the format table's entry (every quant edgecpm exports, e.g. the default model's
    q4_1), else, for a type edgecpm does not export (q3_k, iq*), bits per weight measured from the file size."""
    known = FORMAT_QUANTS.get(fmt, {}).get(name.lower())
    if known is not None:
        return known
    bits = file_bytes * 8 / max(config.parameter_count(), 1)
    return QuantSpec(
        name.lower(),
        bits,
        bits,
        bits,
        "int8_gops" if bits < 12 else "fp16_gflops",
        3 if bits < 6 else 1 if bits < 12 else 0,
    )


def resolve_model(model: Any) -> ModelInfo:
    """MODEL as a preset name, ModelConfig, HF checkpoint dir, .gguf file, artifact dir, or None (default)."""
    if isinstance(model, ModelConfig):
        return ModelInfo(model, "config")
    if isinstance(model, ModelInfo):
        return model
    if model is not None and is_preset(str(model)) and not Path(str(model)).exists():
        return ModelInfo(preset_config(str(model)), "preset", str(model).lower())
    from edgecpm.default_model import resolve_model_path
    from edgecpm.exporters.manifest import is_artifact, read_manifest

    p = resolve_model_path(model)
    if not p.exists():
        from edgecpm.config import PRESET_HF_CONFIGS

        raise EdgecpmError(f"model {str(model)!r} is neither a path nor a preset ({', '.join(PRESET_HF_CONFIGS)})")
    if p.is_dir() and is_artifact(p):
        m = read_manifest(p)
        size = sum(f.stat().st_size for f in (p / n for n in m.model_files) if f.is_file())
        return ModelInfo(
            m.model_config,
            "artifact",
            str(p),
            m.format,
            _quant_from_file(m.quant, m.format, m.model_config, size),
            size,
        )
    from edgecpm.weights import open_checkpoint

    config, source = open_checkpoint(p)
    if p.suffix == ".gguf":
        size = p.stat().st_size
        return ModelInfo(
            config,
            "gguf",
            str(p),
            "gguf",
            _quant_from_file(source.file_type_name(), "gguf", config, size),
            size,
        )
    return ModelInfo(config, "checkpoint", str(p), source=source)


# ---------------------------------------------------------------------------------------------------------
# Planning


def _coefficients(device: DeviceProfile, backend: str, quant: str) -> Any:
    """Calibrated coefficients on a profiled host, else the rules of thumb.

    On a host where some backends were measured, an unmeasured backend's defaults are scaled by how far the
    measured ones (C++ runtimes for a C++ runtime, when there are any) fell short of or beat their own
    defaults, so a busy or slow host does not make the unmeasured backends look better than the measured ones.
    """
    base = default_coefficients(backend, device.engine)
    if device.name != "host":  # measurements imported from that device (edgecpm profile --import)
        from edgecpm.device_profiles.host_store import device_calibration_id, load_calibration
        from edgecpm.planning.calibration import stored_coefficients

        return stored_coefficients(load_calibration(device_calibration_id(device.name)), backend, quant) or base
    from edgecpm.device_profiles.host_store import load_calibration
    from edgecpm.planning.calibration import stored_coefficients

    calibration = load_calibration(device.extra.get("host_id", ""))
    stored = stored_coefficients(calibration, backend, quant)
    if stored is not None:
        return stored
    entries = (calibration or {}).get("backends", {})
    native = {"llama.cpp", "executorch", "onnxruntime"}  # C++ runtimes resemble each other more than torch
    family = {k: v for k, v in entries.items() if (k.split("/")[0] in native) == (backend in native)}
    bw, ce = [], []
    for key, entry in (family or entries).items():
        other = default_coefficients(key.split("/")[0], device.engine)
        bw.append(entry["coefficients"]["bandwidth_efficiency"] / other.bandwidth_efficiency)
        ce.append(entry["coefficients"]["compute_efficiency"] / other.compute_efficiency)
    if not bw:
        return base
    fb, fc = statistics.median(bw), statistics.median(ce)
    return replace(
        base,
        bandwidth_efficiency=base.bandwidth_efficiency * fb,
        compute_efficiency=base.compute_efficiency * fc,
        source=f"default scaled by this host's calibration of other backends (x{fb:.2f} bandwidth, x{fc:.2f} compute)",
    )


def _attention(config: ModelConfig, context: int, sparse: bool | None) -> tuple[dict[str, Any], bool]:
    sc = config.sparse
    if sc is None or not config.has_sparse_layers:
        if sparse:
            raise EdgecpmError(
                "sparse attention was requested but the model has no sparse_config (it was not trained with InfLLM v2)"
            )
        return {
            "kind": "dense",
            "params": None,
            "reason": "the model has no sparse_config: it was not trained with InfLLM v2 sparse attention",
        }, False
    if sparse is False:
        return {"kind": "dense", "params": None, "reason": "dense attention requested"}, False
    budget = sc.topk * sc.block_size + sc.window_size
    params = dict(sc.__dict__)
    if sc.dense_len >= 0 and context <= sc.dense_len:
        why = (
            f"context {context} <= dense_len {sc.dense_len}: InfLLM v2 runs dense attention at this length "
            "and switches to sparse blocks beyond it"
        )
    else:
        why = (
            f"context {context} > dense_len {sc.dense_len}: each token attends at most topk*block_size + "
            f"window_size = {budget} tokens plus one compressed key per {sc.kernel_stride}"
        )
    return {
        "kind": "infllmv2",
        "params": params,
        "attended_tokens_per_query": min(context, budget) if context > sc.dense_len else context,
        "reason": why,
    }, True


def attention_kernel(backend: str, engine: str) -> str:
    """Which InfLLM v2 implementation the chosen backend runs (the registry's default on that engine)."""
    if backend == "torch":
        if engine == "cpu":
            return (
                "compiled C++ InfLLM v2 kernel (edgecpm::infllmv2_sparse_cpu, built at first use; the vectorized "
                "torch kernel where no C++ compiler is present)"
            )
        return "vectorized torch kernel (the Triton kernel is opt-in, EDGECPM_KERNELS=triton, until checked on a GPU)"
    return facts(BACKEND_FORMAT[backend]).features["sparse_layers"].note


def _attention_by_cost(
    attention: dict[str, Any],
    choice: Candidate,
    config: ModelConfig,
    profile: DeviceProfile,
    context: int,
    prompt: int | None,
    sparse: bool | None,
) -> tuple[dict[str, Any], Candidate]:
    """Sparse vs dense for the chosen candidate from the cost model (KV-read term included), with its numbers.

    Past dense_len, sparse attention reads a fixed budget of KV blocks plus one compressed key per stride; dense
    reads the whole cache. When the request leaves the choice open and the model predicts dense faster (a
    budget as large as the context), dense is planned; either way the plan shows both predictions.
    """
    sc = config.sparse
    q = choice.quant
    coeffs = choice.prediction.coefficients
    dense = predict(config, q, choice.backend, profile, context, prompt, coeffs, False)
    sparse_p = choice.prediction
    kv_sparse = kv_read_bytes(config, context, q.kv_bytes, True)
    kv_dense = kv_read_bytes(config, context, q.kv_bytes, False)
    out = dict(attention)
    out["kernel"] = attention_kernel(choice.backend, profile.engine)
    out["predicted"] = {
        "sparse": {
            "decode_tokens_per_s": _round(sparse_p.decode_tokens_per_s),
            "prefill_tokens_per_s": _round(sparse_p.prefill_tokens_per_s),
            "kv_read_bytes_per_token": int(kv_sparse),
        },
        "dense": {
            "decode_tokens_per_s": _round(dense.decode_tokens_per_s),
            "prefill_tokens_per_s": _round(dense.prefill_tokens_per_s),
            "kv_read_bytes_per_token": int(kv_dense),
        },
    }
    past_dense_len = sc is not None and (sc.dense_len < 0 or context > sc.dense_len)
    if not past_dense_len or sparse_p.decode_tokens_per_s is None or dense.decode_tokens_per_s is None:
        return out, choice
    numbers = (
        f"the cost model predicts decode {sparse_p.decode_tokens_per_s:.1f} tok/s sparse vs "
        f"{dense.decode_tokens_per_s:.1f} dense (KV read per token {kv_sparse / 2**20:.1f} vs "
        f"{kv_dense / 2**20:.1f} MiB)"
    )
    if sparse_p.prefill_tokens_per_s is not None and dense.prefill_tokens_per_s is not None:
        numbers += f" and prefill {sparse_p.prefill_tokens_per_s:.0f} vs {dense.prefill_tokens_per_s:.0f} tok/s"
    if sparse is None and dense.decode_tokens_per_s > sparse_p.decode_tokens_per_s:
        out.update(kind="dense", params=None, reason=f"{numbers}: dense is faster at this context, so it is planned")
        return out, replace(choice, prediction=dense)
    out["reason"] = f"{attention['reason']}; {numbers}"
    return out, choice


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _validate(
    config: ModelConfig, context: int, prompt: int | None, memory_gb: float | None, min_decode: float
) -> list[str]:
    warnings = []
    if not isinstance(context, int) or isinstance(context, bool) or context < 1:
        raise EdgecpmError(f"context is {context!r}; expected a positive number of tokens")
    limit = 4 * config.max_position_embeddings
    if context > limit:
        raise EdgecpmError(
            f"context {context} is impossible for this model: more than 4x its "
            f"max_position_embeddings ({config.max_position_embeddings})"
        )
    if context > config.max_position_embeddings:
        warnings.append(
            f"context {context} exceeds the model's native {config.max_position_embeddings} tokens; "
            "quality there needs a long-context RoPE extension (MiniCPM4 uses YaRN-style LongRoPE "
            "factors for 128K)"
        )
    if prompt is not None and (prompt < 1 or prompt > context):
        raise EdgecpmError(f"prompt_tokens is {prompt}; expected 1..context ({context})")
    if memory_gb is not None and memory_gb <= 0:
        raise EdgecpmError(f"memory_gb is {memory_gb}; expected a positive size")
    if min_decode < 0:
        raise EdgecpmError(f"min_decode_tokens_per_s is {min_decode}; expected >= 0")
    return warnings


def _quants_for(info: ModelInfo, fmt: str, backend: str, request_quant: str | None) -> list[QuantSpec]:
    if info.fixed_format is not None:
        if backend == "torch" and info.kind == "gguf":  # the reference backend dequantizes a .gguf to fp32
            quants = [FORMAT_QUANTS["hf"]["f32"]]
        elif fmt != info.fixed_format:
            return []
        else:
            quants = [info.fixed_quant]
    else:
        quants = [q for q in FORMAT_QUANTS[fmt].values() if info.ternary or not q.ternary_only]
    if request_quant is not None:
        return [q for q in quants if q.name == request_quant.lower()]
    return [q for q in quants if q.auto or info.fixed_format is not None]


def _export_refusal(info: ModelInfo, fmt: str, quant: str, sparse: bool) -> str | None:
    """The exporter's own reason when MODEL still has to be exported to `fmt` and it would refuse."""
    if info.fixed_format is not None or fmt not in EXPORT_FORMATS:
        return None
    reason = refusal(info.config, fmt, quant, {"sparse": sparse}, info.source)
    return None if reason is None else f"the {fmt} exporter refuses: {reason}"


def _eagle_head(info: ModelInfo) -> dict[str, Any] | None:
    """The EAGLE head description beside MODEL (`examples/train_eagle_head.py` writes it), if one fits it."""
    from edgecpm.speculative.eagle_files import head_path, read_description

    if info.path is None:
        return None
    path = head_path(Path(info.path))
    if not path.is_file():
        return None
    try:
        return read_description(path, info.config)
    except EdgecpmError:
        return None  # not a head for this model: there is nothing to weigh (loading it would say why)


def _runtime_refusal(config: ModelConfig, backend: str, fmt: str) -> str | None:
    """A format's own runtime that cannot run the model (llama.cpp and a SALA GGUF, which only torch runs)."""
    if backend != FORMAT_BACKENDS.get(fmt):
        return None
    reason = runtime_refusal(config, fmt)
    return None if reason is None else f"{backend} cannot run this model: {reason}"


def plan(
    model: Any,
    device: str | DeviceProfile,
    *,
    context: int = DEFAULT_CONTEXT,
    prompt_tokens: int | None = None,
    quant: str | None = None,
    backend: str | None = None,
    memory_gb: float | None = None,
    min_decode_tokens_per_s: float = 20.0,
    sparse: bool | None = None,
    threads: int | None = None,
    ode_steps: int | None = None,
    min_retention: float | None = None,
    retention: dict[str, Any] | None = None,
    _suggest: bool = True,
) -> Plan:
    """Plan how to run `model` on `device` at `context` tokens (see the module docstring for the policy)."""
    from edgecpm.evals.retention import below_floor as retention_floor

    info = resolve_model(model)
    profile = device if isinstance(device, DeviceProfile) else load_profile(device)
    config = info.config.with_ode_steps(ode_steps)  # shared-layer models: N ODE steps instead of L layers
    warnings = _validate(config, context, prompt_tokens, memory_gb, min_decode_tokens_per_s)
    if memory_gb is not None:
        from edgecpm.device_profiles.profile import Fact

        profile = replace(profile, memory_gib=Fact(float(memory_gb), "--memory-gb request", "guidance"))
    if backend is not None and backend not in profile.backends:
        raise EdgecpmError(
            f"backend {backend!r} does not run on {profile.name}; it runs {', '.join(profile.backends) or 'none'}"
        )
    if quant is not None:
        known = {q for fmt in FORMAT_QUANTS.values() for q in fmt}
        if info.fixed_quant is not None:
            known.add(info.fixed_quant.name)
        if quant.lower() not in known:
            raise EdgecpmError(f"unknown quant {quant!r}; expected one of {', '.join(sorted(known))}")
        spec = next((f[quant.lower()] for f in FORMAT_QUANTS.values() if quant.lower() in f), None)
        if spec is not None and spec.ternary_only and not info.ternary:
            raise EdgecpmError(
                f"quant {quant} stores ternary weights; this model's weights are not ternary (use a BitCPM4 checkpoint)"
            )
    attention, use_sparse = _attention(config, context, sparse)
    budget = profile.memory_budget_bytes
    candidates: list[Candidate] = []
    for b in [backend] if backend else list(profile.backends):
        fmt = BACKEND_FORMAT[b]
        for q in _quants_for(info, fmt, b, quant):
            sparse_here = use_sparse and runs_sparse(fmt)  # llama.cpp runs InfLLM v2 layers dense
            coeffs = _coefficients(profile, b, q.name)
            pred = predict(config, q, b, profile, context, prompt_tokens, coeffs, sparse_here)
            refused = _export_refusal(info, fmt, q.name, use_sparse) or _runtime_refusal(config, b, fmt)
            floor = retention_floor(retention, q.name, sparse_here, min_retention)  # measured by `edgecpm eval`
            fits = refused is None and floor is None and pred.total_bytes <= budget
            rejected = (
                None
                if fits
                else refused
                or floor
                or (
                    f"needs {pred.total_bytes / GIB:.2f} GiB > budget {budget / GIB:.2f} GiB "
                    f"({profile.memory_gib.value:g} GiB x {profile.app_share.value or 1:g})"
                )
            )
            candidates.append(
                Candidate(
                    b, fmt if info.fixed_format is None or b != "torch" else "gguf", q, pred, fits, rejected, refused
                )
            )
    request = {
        "context": context,
        "prompt_tokens": min(prompt_tokens or context, context),
        "quant": quant,
        "ode_steps": ode_steps,
        "backend": backend,
        "memory_gb": memory_gb,
        "min_decode_tokens_per_s": min_decode_tokens_per_s,
        "sparse": sparse,
        "threads": threads,
    }
    if not candidates:
        raise EdgecpmError(
            f"nothing to plan: no backend of {profile.name} ({', '.join(profile.backends)}) runs "
            f"this model's format{'' if quant is None else f' with quant {quant}'}"
        )
    choice = _choose([c for c in candidates if c.fits], list(profile.backends), min_decode_tokens_per_s)
    fits = choice is not None
    if fits and use_sparse and not runs_sparse(BACKEND_FORMAT[choice.backend]):
        note = facts(BACKEND_FORMAT[choice.backend]).features["sparse_layers"].note
        attention = {"kind": "dense", "params": None, "reason": f"{choice.backend} runs dense attention ({note})"}
    elif fits and use_sparse:
        attention, choice = _attention_by_cost(attention, choice, config, profile, context, prompt_tokens, sparse)
    suggestions: list[str] = []
    if fits:
        p = choice.prediction
        speed = "" if p.decode_tokens_per_s is None else f", predicted {p.decode_tokens_per_s:.1f} decode tok/s"
        reason = (
            f"{choice.quant.name} via {choice.backend} fits in {p.total_bytes / GIB:.2f} of "
            f"{budget / GIB:.2f} GiB{speed}; " + _why(choice, candidates, min_decode_tokens_per_s)
        )
    elif all(c.refused for c in candidates):
        reason = f"nothing can be planned on {profile.name}: " + "; ".join(dict.fromkeys(c.refused for c in candidates))
    else:
        smallest = min((c for c in candidates if not c.refused), key=lambda c: c.prediction.total_bytes)
        reason = (
            f"nothing fits {profile.name}: the smallest option, "
            f"{smallest.quant.name} via {smallest.backend}, "
            f"needs {smallest.prediction.total_bytes / GIB:.2f} GiB but an app may use "
            f"{budget / GIB:.2f} GiB ({profile.memory_gib.value:g} GiB x {profile.app_share.value or 1:g})"
        )
        if _suggest:
            suggestions = _suggestions(
                info,
                profile,
                context,
                prompt_tokens,
                smallest,
                quant,
                backend,
                use_sparse,
                min_decode_tokens_per_s,
            )
    return Plan(
        info,
        profile,
        request,
        fits,
        choice,
        attention,
        threads or profile.threads,
        *choose_draft(choice, candidates, eagle=_eagle_head(info), config=config),
        candidates,
        reason,
        suggestions,
        warnings,
        format_report(config, context),
    )


def _choose(fitting: list[Candidate], order: list[str], min_decode: float) -> Candidate | None:
    if not fitting:
        return None

    def speed(c: Candidate) -> float:
        return c.prediction.decode_tokens_per_s or 0.0

    rank = {b: i for i, b in enumerate(order)}
    fast_enough = [c for c in fitting if speed(c) >= min_decode]
    if fast_enough:
        return min(fast_enough, key=lambda c: (c.quant.quality, -speed(c), rank.get(c.backend, 99)))
    if all(c.prediction.decode_tokens_per_s is None for c in fitting):  # speed unknown: most faithful that fits
        return min(fitting, key=lambda c: (c.quant.quality, c.prediction.total_bytes, rank.get(c.backend, 99)))
    return max(fitting, key=lambda c: (speed(c), -c.quant.quality, -rank.get(c.backend, 99)))


def _why(choice: Candidate, candidates: list[Candidate], min_decode: float) -> str:
    rejected = [c for c in candidates if not c.fits]
    parts = []
    s = choice.prediction.decode_tokens_per_s
    if s is None:
        parts.append("bandwidth unknown, so the most faithful quantization that fits was chosen")
    elif s >= min_decode:
        parts.append(f"the most faithful quantization reaching {min_decode:g} tok/s")
    else:
        parts.append(f"no fitting option reaches {min_decode:g} tok/s, so the fastest was chosen")
    if rejected:
        names = sorted({c.quant.name for c in rejected} - {c.quant.name for c in candidates if c.fits})
        if names:
            parts.append("rejected for memory: " + ", ".join(names))
    return "; ".join(parts)


def _suggestions(
    info: ModelInfo,
    profile: DeviceProfile,
    context: int,
    prompt: int | None,
    smallest: Candidate,
    quant: str | None,
    backend: str | None,
    sparse: bool,
    min_decode: float,
) -> list[str]:
    out: list[str] = []
    budget = profile.memory_budget_bytes
    config, q, p = info.config, smallest.quant, smallest.prediction
    if quant is not None or backend is not None:
        free = plan(
            info,
            profile,
            context=context,
            prompt_tokens=prompt,
            min_decode_tokens_per_s=min_decode,
            sparse=sparse if config.sparse is not None else None,
            _suggest=False,
        )
        if free.fits:
            c = free.choice
            out.append(
                f"without the quant/backend constraint: {c.quant.name} via {c.backend} fits "
                f"({c.prediction.total_bytes / GIB:.2f} GiB)"
            )
    fixed = p.total_bytes - p.kv_bytes
    per_token = kv_cache_bytes(config, context, q.kv_bytes, sparse) / context
    if fixed < budget:
        max_ctx = int((budget - fixed) / per_token)
        if max_ctx >= 256:
            out.append(f"{q.name} via {smallest.backend} fits with a context of up to {max_ctx} tokens")
    out.append(
        f"a device with at least {math.ceil(p.total_bytes / (profile.app_share.value or 1) / GIB)} GiB "
        f"of memory runs {q.name} at this context"
    )
    if not info.ternary and info.fixed_format is None:
        ternary = replace(config, layers=tuple(replace(s, ternary=True) for s in config.layers))
        tq = FORMAT_QUANTS["gguf"]["tq2_0"]
        if "llama.cpp" in profile.backends and refusal(ternary, "gguf", "tq2_0") is None:
            tp = predict(
                ternary,
                tq,
                "llama.cpp",
                profile,
                context,
                prompt,
                _coefficients(profile, "llama.cpp", "tq2_0"),
                sparse,
            )
            verdict = "fits" if tp.total_bytes <= budget else "does not fit either"
            out.append(
                f"a ternary (BitCPM4-style) checkpoint of this shape as tq2_0 needs "
                f"{tp.total_bytes / GIB:.2f} GiB and {verdict}"
            )
    if info.kind == "preset" and info.path == "minicpm4-8b":
        small = plan(
            "minicpm4-0.5b",
            profile,
            context=context,
            prompt_tokens=prompt,
            min_decode_tokens_per_s=min_decode,
            _suggest=False,
        )
        if small.fits:
            c = small.choice
            out.append(f"minicpm4-0.5b fits: {c.quant.name} via {c.backend}, {c.prediction.total_bytes / GIB:.2f} GiB")
    return out


def format_plan(plan_: Plan) -> str:
    """Human-readable plan for the CLI."""
    d = plan_.to_dict()
    m, dev, req = d["model"], d["device"], d["request"]
    lines = [
        f"model   {m['name'] or m['kind']} ({m['parameters'] / 1e9:.2f}B params, {m['layers']} layers"
        f"{', ternary' if m['ternary'] else ''})",
        f"device  {dev['display_name']}: budget {dev['memory_budget_bytes'] / GIB:.2f} GiB, bandwidth "
        f"{dev['bandwidth_gbs'] if dev['bandwidth_gbs'] is not None else 'unknown'} GB/s "
        f"({dev['bandwidth_basis']})",
        f"request context {req['context']} tokens, prompt {req['prompt_tokens']}",
    ]
    lines.append("")
    if d["choice"]:
        c = d["choice"]
        mem, pr = c["memory"], c["predicted"]
        lines += [
            f"plan    {c['quant']} {c['format']} on {c['backend']}, {c['threads']} threads",
            f"threads {c['threads']}: {c['threads_reason']}",
            f"attention {c['attention']['kind']}: {c['attention']['reason']}",
            *([f"kernel  {c['attention']['kernel']}"] if c["attention"].get("kernel") else []),
            f"draft   {c['draft']['source'] + ' k=' + str(c['draft']['draft_tokens']) if c['draft'] else 'none'}: "
            f"{c['draft_reason']}",
            f"memory  weights {mem['weights_bytes'] / GIB:.2f} GiB + KV {mem['kv_bytes'] / GIB:.3f} GiB + "
            f"runtime {(mem['runtime_bytes'] + mem['activation_bytes']) / GIB:.2f} GiB = "
            f"{mem['total_bytes'] / GIB:.2f} GiB of {mem['budget_bytes'] / GIB:.2f} GiB",
        ]
        if pr["decode_tokens_per_s"] is not None:
            sparse_txt = ""
            if c["attention"]["kind"] == "infllmv2":
                sparse_txt = f" (dense attention: {pr['decode_tokens_per_s_dense']})"
            lines.append(
                f"speed   decode {pr['decode_tokens_per_s']} tok/s at {req['context']}{sparse_txt}; prefill "
                f"{pr['prefill_tokens_per_s']} tok/s ({pr['prefill_bound']} bound); "
                f"coefficients: {pr['coefficients']['source']}"
            )
        else:
            lines.append("speed   unknown (no bandwidth for this device)")
    else:
        lines.append("plan    NONE")
    lines.append(f"why     {d['reason']}")
    for s in d["suggestions"]:
        lines.append(f"  would fit: {s}")
    for w in d["warnings"]:
        lines.append(f"warning {w}")
    for fmt, lost in d["export_losses"].items():
        if lost:
            lines.append(f"format  {fmt}: {'; '.join(lost)}")
    lines.append("")
    lines.append(f"{'backend':<12} {'quant':<8} {'GiB':>7} {'decode/s':>9} {'prefill/s':>10}  verdict")
    for c in d["candidates"]:
        dec = "-" if c["decode_tokens_per_s"] is None else f"{c['decode_tokens_per_s']:.1f}"
        pre = "-" if c["prefill_tokens_per_s"] is None else f"{c['prefill_tokens_per_s']:.0f}"
        verdict = "fits" if c["fits"] else f"REFUSED: {c['rejected']}"
        lines.append(f"{c['backend']:<12} {c['quant']:<8} {c['total_bytes'] / GIB:>7.2f} {dec:>9} {pre:>10}  {verdict}")
    return "\n".join(lines)
