"""`DeviceProfile`: what a device offers an LLM (memory, bandwidth, compute, ISA, backends), as plain data.

Every number is a `Fact` carrying its source and a confidence status (the markers in
`docs/device-sources.md`): a value is never written down without where it came from, and a
number nobody could source is `"unknown"` (value None) rather than a guess. Profiles live as one TOML file per
device beside this module; `host` is probed live (`host.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from edgecpm.errors import EdgecpmError
from edgecpm.exporters.formats import KNOWN_BACKENDS as FORMAT_TABLE_BACKENDS

PROFILE_DIR = Path(__file__).parent
STATUSES = (
    "confirmed",
    "secondary",
    "derived",
    "unverified",
    "guidance",
    "measured",
    "calibrated",
    "unknown",
)
KINDS = ("phone", "sbc", "embedded", "gpu", "laptop", "desktop", "host")
ENGINES = ("cpu", "gpu")
COMPUTE_KEYS = ("fp32_gflops", "fp16_gflops", "bf16_gflops", "int8_gops")
KNOWN_BACKENDS = FORMAT_TABLE_BACKENDS  # read from the format table (exporters/formats.py)


@dataclass(frozen=True)
class Fact:
    """One number with its provenance; `value` is None when unknown."""

    value: float | None
    source: str
    status: str

    @property
    def known(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "status": self.status, "source": self.source}


UNKNOWN = Fact(None, "not located in any public source", "unknown")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    display_name: str
    kind: str
    engine: str  # what the LLM backends run on: "cpu" or "gpu" (unified memory or VRAM)
    memory_gib: Fact
    app_share: Fact  # fraction of memory one app may use before the OS kills it or swaps
    bandwidth_spec_gbs: Fact
    bandwidth_measured_gbs: Fact
    compute: dict[str, Fact]  # COMPUTE_KEYS, peak of the engine that runs the model
    cpu_cores: int
    threads: int  # recommended CPU threads (performance cores)
    cpu: str
    isa: tuple[str, ...]
    backends: tuple[str, ...]
    gpu: str = ""
    cuda_cc: str | None = None
    npu: str = ""
    notes: str = ""
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def memory_budget_bytes(self) -> float:
        """Bytes an app may use: total times the app share (1.0 when the share is unknown)."""
        share = self.app_share.value if self.app_share.known else 1.0
        return float(self.memory_gib.value or 0.0) * share * 2**30

    def effective_bandwidth(self) -> tuple[float | None, str]:
        """Sustained bandwidth in GB/s to plan with, and where it came from.

        A measured number wins; otherwise 70 % of the spec sheet (sustained bandwidth is typically 70-90 % of
        theoretical on desktops and Jetson, phones reach less: docs/device-sources.md).
        """
        if self.bandwidth_measured_gbs.known:
            return float(self.bandwidth_measured_gbs.value), "measured"
        if self.bandwidth_spec_gbs.known:
            return float(self.bandwidth_spec_gbs.value) * 0.7, "70% of spec"
        return None, "unknown"

    def peak_compute(self, key: str) -> float | None:
        """Peak GFLOPS (or GOPS) for one dtype key, falling back to fp32 for missing half-precision rates."""
        fact = self.compute.get(key)
        if fact is not None and fact.known:
            return float(fact.value)
        if key in ("fp16_gflops", "bf16_gflops"):
            other = self.compute.get("fp16_gflops" if key == "bf16_gflops" else "bf16_gflops")
            if other is not None and other.known:
                return float(other.value)
        fp32 = self.compute.get("fp32_gflops")
        return float(fp32.value) if fp32 is not None and fp32.known else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "kind": self.kind,
            "engine": self.engine,
            "memory_gib": self.memory_gib.to_dict(),
            "app_share": self.app_share.to_dict(),
            "memory_budget_bytes": int(self.memory_budget_bytes),
            "bandwidth_spec_gbs": self.bandwidth_spec_gbs.to_dict(),
            "bandwidth_measured_gbs": self.bandwidth_measured_gbs.to_dict(),
            "compute": {k: v.to_dict() for k, v in self.compute.items()},
            "cpu_cores": self.cpu_cores,
            "threads": self.threads,
            "cpu": self.cpu,
            "isa": list(self.isa),
            "gpu": self.gpu,
            "cuda_cc": self.cuda_cc,
            "npu": self.npu,
            "backends": list(self.backends),
            "notes": self.notes,
            "path": self.path,
            **({"extra": self.extra} if self.extra else {}),
        }


# ---------------------------------------------------------------------------------------------------------
# Parsing and validation


def _fail(where: str, message: str) -> EdgecpmError:
    return EdgecpmError(f"device profile {where}: {message}")


def parse_fact(raw: Any, label: str, where: str) -> Fact:
    """`{ value = 76.8 | "unknown", status = "...", source = "..." }` -> Fact; errors name the field."""
    if not isinstance(raw, dict):
        raise _fail(where, f"field '{label}' must be a table {{ value = ..., status = ..., source = ... }}")
    missing = [k for k in ("value", "status", "source") if k not in raw]
    if missing:
        raise _fail(where, f"field '{label}' lacks {', '.join(missing)}")
    value, status, source = raw["value"], raw["status"], raw["source"]
    if status not in STATUSES:
        raise _fail(where, f"field '{label}.status' is {status!r}; expected one of {', '.join(STATUSES)}")
    if not isinstance(source, str) or not source.strip():
        raise _fail(where, f"field '{label}.source' must name where the number came from")
    if value == "unknown":
        if status != "unknown":
            raise _fail(where, f"field '{label}' is unknown but its status is {status!r}")
        return Fact(None, source, status)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e300:  # NaN, inf too
        raise _fail(where, f"field '{label}.value' is {value!r}; expected a positive number or \"unknown\"")
    if status == "unknown":
        raise _fail(where, f"field '{label}' has a value but status 'unknown'")
    return Fact(float(value), source, status)


def _req(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, label: str = "") -> Any:
    if key not in d:
        raise _fail(where, f"field '{label}{key}' is missing")
    value = d[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _fail(where, f"field '{label}{key}' is {value!r}; expected {getattr(kind, '__name__', kind)}")
    return value


def profile_from_dict(d: dict[str, Any], where: str) -> DeviceProfile:
    """Validate a parsed profile file; every error names the file and the field."""
    name = _req(d, "name", str, where)
    kind = _req(d, "kind", str, where)
    if kind not in KINDS:
        raise _fail(where, f"field 'kind' is {kind!r}; expected one of {', '.join(KINDS)}")
    engine = _req(d, "engine", str, where)
    if engine not in ENGINES:
        raise _fail(where, f"field 'engine' is {engine!r}; expected one of {', '.join(ENGINES)}")
    memory = _req(d, "memory", dict, where)
    bandwidth = _req(d, "bandwidth", dict, where)
    compute_raw = _req(d, "compute", dict, where)
    cpu = _req(d, "cpu", dict, where)
    mem = parse_fact(memory.get("total_gib"), "memory.total_gib", where)
    if not mem.known:
        raise _fail(where, "field 'memory.total_gib' must be known (the planner cannot fit a model otherwise)")
    share = parse_fact(memory.get("app_share"), "memory.app_share", where)
    if share.known and not 0 < share.value <= 1:
        raise _fail(where, f"field 'memory.app_share' is {share.value}; expected a fraction in (0, 1]")
    compute: dict[str, Fact] = {}
    for key, raw in compute_raw.items():
        if key not in COMPUTE_KEYS:
            raise _fail(where, f"field 'compute.{key}' is not known; expected {', '.join(COMPUTE_KEYS)}")
        compute[key] = parse_fact(raw, f"compute.{key}", where)
    backends = tuple(_req(d, "backends", list, where))
    for b in backends:
        if b not in KNOWN_BACKENDS:
            raise _fail(where, f"field 'backends' names {b!r}; expected some of {', '.join(KNOWN_BACKENDS)}")
    cores = _req(cpu, "cores", int, where, "cpu.")
    threads = _req(cpu, "threads", int, where, "cpu.")
    if cores <= 0 or not 0 < threads <= cores:
        raise _fail(
            where,
            f"fields 'cpu.cores' ({cores}) and 'cpu.threads' ({threads}) must satisfy 0 < threads <= cores",
        )
    gpu = d.get("gpu", {})
    if not isinstance(gpu, dict):
        raise _fail(where, "field 'gpu' must be a table")
    return DeviceProfile(
        name=name,
        display_name=str(d.get("display_name", name)),
        kind=kind,
        engine=engine,
        memory_gib=mem,
        app_share=share,
        bandwidth_spec_gbs=parse_fact(bandwidth.get("spec_gbs"), "bandwidth.spec_gbs", where),
        bandwidth_measured_gbs=parse_fact(bandwidth.get("measured_gbs"), "bandwidth.measured_gbs", where),
        compute=compute,
        cpu_cores=cores,
        threads=threads,
        cpu=str(cpu.get("description", "")),
        isa=tuple(str(x) for x in _req({"isa": cpu.get("isa", [])}, "isa", list, where, "cpu.")),
        backends=backends,
        gpu=str(gpu.get("name", "")),
        cuda_cc=str(gpu["cuda_cc"]) if "cuda_cc" in gpu else None,
        npu=str(d.get("npu", "")),
        notes=str(d.get("notes", "")),
        path=where,
    )


def read_profile_file(path: str | Path) -> DeviceProfile:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgecpmError(f"device profile file not found: {p}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgecpmError(f"device profile {p}: not valid TOML ({exc})") from None
    except RecursionError:
        raise EdgecpmError(f"device profile {p}: not valid TOML (nested too deeply)") from None
    except OSError as exc:
        raise EdgecpmError(f"cannot read device profile {p}: {exc.strerror or exc}") from None
    profile = profile_from_dict(data, str(p))
    if p.suffix == ".toml" and p.stem != profile.name:
        raise _fail(str(p), f"field 'name' is {profile.name!r}; expected the file name {p.stem!r}")
    return profile


def profile_names() -> list[str]:
    """Names of the bundled profiles plus `host`."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml")) + ["host"]


def list_profiles() -> list[DeviceProfile]:
    """Every bundled profile (validated); `host` is not probed here (it takes a second)."""
    return [read_profile_file(p) for p in sorted(PROFILE_DIR.glob("*.toml"))]


def load_bundled_profile(name: str | Path) -> DeviceProfile:
    """A bundled profile by name or a path to a TOML profile file (`catalog.load_profile` adds `host`)."""
    key = str(name)
    if key.endswith(".toml") or Path(key).is_file():
        return read_profile_file(key)
    path = PROFILE_DIR / f"{key.lower()}.toml"
    if not path.is_file():
        import difflib

        names = profile_names()
        close = difflib.get_close_matches(key.lower(), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EdgecpmError(f"unknown device {key!r}{hint}; expected one of {', '.join(names)} or a .toml file")
    return read_profile_file(path)
