"""The `host` device profile, probed live: cores, ISA flags, RAM, GPU, and a measured memory bandwidth.

Spec sheets overstate what a CPU can stream (papers-and-anchors.md Part 2b: a DDR5 laptop measured 33 of
76.8 GB/s), so the host's bandwidth is measured: a multi-threaded read (sum) and copy of a buffer far larger
than the last-level cache, median of several runs. Peak fp32/bf16 matmul rates are measured the same way.
The probe is stored with the host's calibration (calibration.py) so `plan --device host` does not re-measure.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from .profile import DeviceProfile, Fact

X86_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
ARM_FLAGS = {
    "asimd": "neon",
    "fphp": "fp16",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
    "sme": "sme",
}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_info() -> dict[str, Any]:
    """Model name, usable cores (affinity and cgroup quota) and the ISA features LLM kernels use."""
    text = _read("/proc/cpuinfo")
    model = ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            model = m.group(1).strip()
            break
    model = model or platform.processor() or platform.machine()
    flags_line = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    raw = set(flags_line.group(1).split()) if flags_line else set()
    if platform.machine().lower() in ("aarch64", "arm64"):
        isa = [name for flag, name in ARM_FLAGS.items() if flag in raw]
    else:
        isa = [f for f in X86_FLAGS if f in raw]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _read("/sys/fs/cgroup/cpu.max").split()
    if len(quota) == 2 and quota[0] != "max":
        cores = max(1, min(cores, int(int(quota[0]) / int(quota[1]))))
    return {"model": model, "cores": cores, "isa": isa, "arch": platform.machine()}


def memory_info() -> dict[str, int]:
    """Total and available RAM in bytes, capped by a cgroup memory limit when there is one."""
    text = _read("/proc/meminfo")

    def field(name: str) -> int:
        m = re.search(rf"^{name}:\s*(\d+) kB", text, re.M)
        return int(m.group(1)) * 1024 if m else 0

    total, available = field("MemTotal"), field("MemAvailable")
    if not total:  # macOS and others
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 0
        available = available or total
    limit = _read("/sys/fs/cgroup/memory.max").strip()
    if limit.isdigit() and 0 < int(limit) < total:
        total = int(limit)
        available = min(available, total)
    return {"total_bytes": total, "available_bytes": available}


def gpu_info() -> dict[str, Any] | None:
    """The first CUDA GPU (through torch, else nvidia-smi), or None."""
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return {"name": p.name, "memory_bytes": int(p.total_memory), "cuda_cc": f"{p.major}.{p.minor}"}
    except Exception:  # noqa: BLE001 - a broken CUDA install must not break the probe
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            name, mem, cc = [s.strip() for s in out.stdout.splitlines()[0].split(",")]
            return {"name": name, "memory_bytes": int(float(mem)) * 2**20, "cuda_cc": cc}
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None
    return None


def recommended_threads(cores: int) -> int:
    """Threads for this host now: the cores other processes leave idle (1-minute load average).

    OpenMP-style thread pools collapse when oversubscribed (llama.cpp #21763: 28 -> 0.26 tok/s with more
    threads than free cores; on a shared 2-core box torch decode ran 9x slower with 2 threads than with 1).
    """
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def host_id(cpu: dict[str, Any] | None = None, mem: dict[str, int] | None = None) -> str:
    """Stable id of this machine's shape (CPU model, usable cores, RAM): calibration is stored under it."""
    cpu = cpu or cpu_info()
    mem = mem or memory_info()
    key = f"{cpu['model']}|{cpu['arch']}|{cpu['cores']}|{round(mem['total_bytes'] / 2**30)}"
    slug = re.sub(r"[^a-z0-9]+", "-", cpu["model"].lower()).strip("-")[:32] or "cpu"
    return f"{slug}-{cpu['cores']}c-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def _median_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def measure_bandwidth(size_mb: int = 256, repeats: int = 5, threads: int | None = None) -> dict[str, float]:
    """Multi-threaded read and copy bandwidth (GB/s) over a `size_mb` buffer, median of `repeats`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or cpu_info()["cores"])
    try:
        n = size_mb * 2**20 // 4
        src = torch.ones(n, dtype=torch.float32)
        dst = torch.empty_like(src)
        src.sum()
        dst.copy_(src)  # touch every page before timing
        t_read = _median_time(lambda: src.sum(), repeats)
        t_copy = _median_time(lambda: dst.copy_(src), repeats)
    finally:
        torch.set_num_threads(previous)
    nbytes = n * 4
    return {"read_gbs": nbytes / t_read / 1e9, "copy_gbs": 2 * nbytes / t_copy / 1e9, "buffer_mb": size_mb}


def measure_compute(threads: int | None = None, size: int = 1024, repeats: int = 5) -> dict[str, float]:
    """Peak-ish matmul rates (GFLOPS) of torch on this CPU: fp32 and bf16 `size`x`size` GEMMs."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or cpu_info()["cores"])
    out: dict[str, float] = {}
    try:
        for key, dtype in (("fp32_gflops", torch.float32), ("bf16_gflops", torch.bfloat16)):
            a = torch.randn(size, size).to(dtype)
            b = torch.randn(size, size).to(dtype)
            a @ b
            t = _median_time(lambda a=a, b=b: a @ b, repeats)
            out[key] = 2 * size**3 / t / 1e9
    finally:
        torch.set_num_threads(previous)
    return out


def probe(measure: bool = True) -> dict[str, Any]:
    """Everything the host profile is built from; `measure=False` skips the timed parts."""
    cpu, mem = cpu_info(), memory_info()
    data: dict[str, Any] = {
        "host_id": host_id(cpu, mem),
        "cpu": cpu,
        "memory": mem,
        "gpu": gpu_info(),
        "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "threads": recommended_threads(cpu["cores"]),
    }
    if measure:
        data["bandwidth"] = measure_bandwidth(threads=data["threads"])
        data["compute"] = measure_compute(threads=data["threads"])
    return data


def profile_from_probe(data: dict[str, Any], backends: list[str] | None = None) -> DeviceProfile:
    """A `DeviceProfile` for the probed host (engine "cpu": the edgecpm backends here run on the CPU)."""
    cpu, mem = data["cpu"], data["memory"]
    when = data.get("probed_at", "")
    probe_src = f"probed on this host ({when})"
    bw = data.get("bandwidth")
    measured = (
        Fact(
            round(bw["read_gbs"], 2),
            f"multi-threaded read of a {bw['buffer_mb']} MB buffer, median ({probe_src})",
            "measured",
        )
        if bw
        else Fact(None, "not measured (probe run without measurement)", "unknown")
    )
    compute = {
        k: Fact(round(v, 1), f"torch {k.split('_')[0]} 1024^3 GEMM, median ({probe_src})", "measured")
        for k, v in (data.get("compute") or {}).items()
    }
    if backends is None:
        from ..backends.base import available_backends

        backends = available_backends()
    gpu = data.get("gpu") or {}
    available = mem.get("available_bytes") or mem["total_bytes"]
    share = min(1.0, max(0.05, available / mem["total_bytes"])) if mem["total_bytes"] else 1.0
    return DeviceProfile(
        name="host",
        display_name=f"this machine: {cpu['model']} ({cpu['cores']} cores)",
        kind="host",
        engine="cpu",
        memory_gib=Fact(mem["total_bytes"] / 2**30, f"/proc/meminfo or cgroup limit ({probe_src})", "measured"),
        app_share=Fact(round(share, 3), f"MemAvailable / MemTotal at probe time ({probe_src})", "measured"),
        bandwidth_spec_gbs=Fact(None, "the host's DRAM spec is not probed", "unknown"),
        bandwidth_measured_gbs=measured,
        compute=compute,
        cpu_cores=cpu["cores"],
        threads=int(data.get("threads") or cpu["cores"]),
        cpu=cpu["model"],
        isa=tuple(cpu["isa"]),
        backends=tuple(b for b in backends if b != "auto"),
        gpu=gpu.get("name", ""),
        cuda_cc=gpu.get("cuda_cc"),
        notes=f"host id {data['host_id']}; copy bandwidth "
        f"{round(bw['copy_gbs'], 2) if bw else 'n/a'} GB/s (read+write bytes)",
        path="(probed)",
        extra={"host_id": data["host_id"], "probe": data},
    )


def host_profile(remeasure: bool = False) -> DeviceProfile:
    """The host profile, reusing the stored probe of this machine when there is one (see calibration.py)."""
    from .calibration import load_calibration, save_probe

    hid = host_id()
    stored = None if remeasure else load_calibration(hid)
    if stored and stored.get("probe", {}).get("bandwidth"):
        return profile_from_probe(stored["probe"])
    data = probe(measure=True)
    save_probe(data)
    return profile_from_probe(data)
