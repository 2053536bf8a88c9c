"""The `host` device profile, probed live: cores, ISA flags, RAM, GPU, and a measured memory bandwidth.

Spec sheets overstate what a CPU can stream (a DDR5 laptop measured 33 of 76.8 GB/s; docs/planner.md), so
the host's bandwidth is measured: reads of a buffer far larger than the last-level cache on every usable core,
best of several methods (one method's kernel can be the bottleneck, not the memory), median of several runs.
Peak fp32/bf16 matmul rates are measured the same way. The probe is stored with the host's calibration
(calibration.py) so `plan --device host` does not re-measure the hardware; the thread count, which depends on
what else runs right now, is decided afresh by a short probe each time (`choose_threads`).
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

from edgecpm.device_profiles.profile import DeviceProfile, Fact

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
# 2: bandwidth is the best of several read methods on every usable core (1 was torch's sum alone)
PROBE_VERSION = 2
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


def usable_cores() -> int:
    """Cores this process may run on: the affinity mask, capped by a cgroup v2/v1 CPU quota."""
    return cpu_info()["cores"]


def _sync_probe_seconds(threads: int, reps: int = 150, give_up_s: float = float("inf")) -> float:
    """Time of `reps` small multi-threaded matrix-vector products: a barrier per op, as in a decode step.

    Fixed-work, so the time is comparable across thread counts: on idle cores more threads finish sooner; on
    cores another process is using, a thread pool spins at each barrier waiting for a descheduled thread and
    one thread is faster (llama.cpp #21763 saw 28 -> 0.26 tok/s oversubscribed).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        m = torch.ones(1024, 1024)
        v = torch.ones(1024)
        for _ in range(10):
            torch.mv(m, v)
        t0 = time.perf_counter()
        for i in range(reps):
            torch.mv(m, v)
            elapsed = time.perf_counter() - t0
            if elapsed > give_up_s:  # already far slower than another count: extrapolate, stop
                return elapsed * reps / (i + 1)
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous)


def choose_threads(cores: int | None = None, rounds: int = 3) -> dict[str, Any]:
    """Threads for this host now: every usable core, unless a short measured probe shows fewer are faster.

    The probe (well under a second) times the same parallel work at each candidate count, rounds interleaved,
    medians compared; fewer threads win only when at least 15% faster. The load average never decides: on a
    2-core machine it stays high for a minute after a compile that has already finished.
    """
    cores = cores or usable_cores()
    if cores <= 1:
        return {"threads": 1, "cores": cores, "reason": "1 usable core", "probe_ms": {}}
    candidates = sorted({cores, max(1, cores // 2), 1}, reverse=True)
    times: dict[int, list[float]] = {n: [] for n in candidates}
    for _ in range(rounds):
        for n in reversed(candidates):  # fewest first, so an oversubscribed count is cut short
            best_so_far = min((min(t) for t in times.values() if t), default=float("inf"))
            times[n].append(_sync_probe_seconds(n, give_up_s=4 * best_so_far))
    med = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
    best = cores
    for n in candidates[1:]:
        if med[n] < 0.85 * med[best]:
            best = n
    ms = {n: round(t * 1e3, 2) for n, t in med.items()}
    shown = ", ".join(f"{n} thread{'s' if n > 1 else ''} {ms[n]} ms" for n in candidates)
    if best == cores:
        reason = f"all {cores} usable cores (probe: {shown}; fewer threads were not faster)"
    else:
        reason = (
            f"{best} of {cores} usable cores: the probe measured fewer threads faster right now ({shown}); "
            "other processes are using the cores"
        )
    return {"threads": best, "cores": cores, "reason": reason, "probe_ms": ms}


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


def _last_level_cache_bytes() -> int:
    """The largest CPU cache (sysfs), 32 MiB when it cannot be read."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = _read(str(f)).strip().upper()
        m = re.match(r"(\d+)([KMG]?)", text)
        if m:
            sizes.append(int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)])
    return max(sizes) if sizes else 32 * 2**20


def _read_methods(threads: int) -> dict[str, Any]:
    """Ways to stream a buffer once: numpy's sum on one thread per slice, torch's reductions on a pool."""
    import numpy as np
    import torch

    def numpy_threads(buf: np.ndarray) -> Any:
        from concurrent.futures import ThreadPoolExecutor

        parts = np.array_split(buf, threads)
        pool = ThreadPoolExecutor(threads)

        def run() -> None:
            list(pool.map(np.add.reduce, parts))  # numpy releases the GIL inside the reduction

        return run, pool

    def torch_sum(buf: np.ndarray) -> Any:
        t = torch.from_numpy(buf)
        return (lambda: t.sum()), None

    def torch_max(buf: np.ndarray) -> Any:
        t = torch.from_numpy(buf)
        return (lambda: t.amax()), None

    return {"numpy-sum x threads": numpy_threads, "torch-sum": torch_sum, "torch-amax": torch_max}


def measure_bandwidth(size_mb: int | None = None, repeats: int = 5, threads: int | None = None) -> dict[str, Any]:
    """Read and copy bandwidth (GB/s): best of several read methods over a buffer far larger than the LLC.

    Each method is timed `repeats` times (median); the best method is what the hardware gives, since the
    cost model's efficiency coefficients are fractions of it. Copy is torch's multi-threaded copy_.
    """
    import numpy as np
    import torch

    threads = threads or cpu_info()["cores"]
    if size_mb is None:
        size_mb = int(min(512, max(256, 8 * _last_level_cache_bytes() / 2**20)))
    n = size_mb * 2**20 // 4
    buf = np.ones(n, dtype=np.float32)
    nbytes = buf.nbytes
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    reads: dict[str, float] = {}
    try:
        for name, make in _read_methods(threads).items():
            fn, pool = make(buf)
            try:
                fn()  # warm up: touch every page
                reads[name] = nbytes / _median_time(fn, repeats) / 1e9
            finally:
                if pool is not None:
                    pool.shutdown()
        src = torch.from_numpy(buf)
        dst = torch.empty_like(src)
        dst.copy_(src)
        t_copy = _median_time(lambda: dst.copy_(src), repeats)
    finally:
        torch.set_num_threads(previous)
    best = max(reads, key=reads.get)
    return {
        "read_gbs": reads[best],
        "read_method": best,
        "read_methods_gbs": {k: round(v, 2) for k, v in reads.items()},
        "copy_gbs": 2 * nbytes / t_copy / 1e9,
        "buffer_mb": size_mb,
        "threads": threads,
    }


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
    choice = choose_threads(cpu["cores"])
    data: dict[str, Any] = {
        "version": PROBE_VERSION,
        "host_id": host_id(cpu, mem),
        "cpu": cpu,
        "memory": mem,
        "gpu": gpu_info(),
        "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "threads": choice["threads"],
        "threads_reason": choice["reason"],
        "threads_probe_ms": choice["probe_ms"],
    }
    if measure:
        # the hardware's bandwidth and compute: every usable core, whatever the thread choice says now
        data["bandwidth"] = measure_bandwidth(threads=cpu["cores"])
        data["compute"] = measure_compute(threads=cpu["cores"])
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
            f"read of a {bw['buffer_mb']} MB buffer on {bw.get('threads', cpu['cores'])} threads, best of "
            f"{len(bw.get('read_methods_gbs', {})) or 1} methods ({bw.get('read_method', 'torch-sum')}), "
            f"median ({probe_src})",
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
        from edgecpm.backends.registry import available_backends

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
        extra={"host_id": data["host_id"], "probe": data, "threads_reason": data.get("threads_reason", "")},
    )


def host_profile(remeasure: bool = False) -> DeviceProfile:
    """The host profile, reusing the stored probe of this machine when there is one (see calibration.py)."""
    from edgecpm.device_profiles.host_store import load_calibration, save_probe

    hid = host_id()
    stored = None if remeasure else load_calibration(hid)
    if stored and stored.get("probe", {}).get("bandwidth") and stored["probe"].get("version") == PROBE_VERSION:
        # bandwidth and compute are the hardware's and are reused; how many threads pay off is decided now
        data = dict(stored["probe"])
        choice = choose_threads(data["cpu"]["cores"])
        data.update(threads=choice["threads"], threads_reason=choice["reason"], threads_probe_ms=choice["probe_ms"])
        return profile_from_probe(data)
    data = probe(measure=True)
    save_probe(data)
    return profile_from_probe(data)
