"""What a newcomer's machine needs: threads from the usable cores, a bandwidth probe that reaches the hardware,
held-out calibration error, and one-line errors (never a traceback) for missing extras and internal bugs."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from edgecpm.device_profiles import host
from edgecpm.profiling.profiler import held_out_error


def test_threads_use_every_core_unless_fewer_measure_faster(monkeypatch) -> None:
    idle = {4: 0.010, 2: 0.018, 1: 0.035}
    monkeypatch.setattr(host, "_sync_probe_seconds", lambda n, **_: idle[n])
    choice = host.choose_threads(4)
    assert choice["threads"] == 4 and "all 4 usable cores" in choice["reason"]
    busy = {4: 0.400, 2: 0.020, 1: 0.030}  # oversubscribed: the pool spins at every barrier
    monkeypatch.setattr(host, "_sync_probe_seconds", lambda n, **_: busy[n])
    choice = host.choose_threads(4)
    assert choice["threads"] == 2 and "faster right now" in choice["reason"]
    close = {2: 0.020, 1: 0.019}  # 5% is noise: keep every core
    monkeypatch.setattr(host, "_sync_probe_seconds", lambda n, **_: close[n])
    assert host.choose_threads(2)["threads"] == 2
    assert host.choose_threads(1)["threads"] == 1


def test_real_thread_probe_is_short_and_bounded() -> None:
    t0 = time.perf_counter()
    choice = host.choose_threads()
    assert time.perf_counter() - t0 < 10
    assert 1 <= choice["threads"] <= host.usable_cores()
    assert set(choice["probe_ms"]) >= {1} if host.usable_cores() > 1 else True


def test_bandwidth_probe_reaches_a_plain_numpy_read() -> None:
    """The probe's best method must not fall below an independent one-thread NumPy sum of a large buffer."""
    buf = np.ones(256 * 2**20 // 4, dtype=np.float32)
    buf.sum()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t0)
    numpy_gbs = buf.nbytes / sorted(times)[1] / 1e9
    del buf
    probed = host.measure_bandwidth(size_mb=256, repeats=3)
    assert probed["read_method"] in probed["read_methods_gbs"]
    assert probed["read_gbs"] >= 0.7 * numpy_gbs, (probed, numpy_gbs)  # 0.7: a shared machine's noise


def test_held_out_error_is_hand_computed() -> None:
    preds = [
        {"measured_decode": 100.0, "predicted_decode_held_out": 90.0},  # 10 %
        {"measured_decode": 50.0, "predicted_decode_held_out": 60.0},  # 20 %
        {"measured_decode": 20.0, "predicted_decode_held_out": 21.0},  # 5 %
    ]
    assert held_out_error(preds) == pytest.approx(0.10)
    assert held_out_error([{"measured_decode": 1.0, "predicted_decode_held_out": None}]) is None


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from edgecpm.cli import main
sys.exit(main({argv!r}))
"""


def run_cli_without(module: str, argv: list[str], tmp_path, extra_env: dict | None = None):
    import os

    env = dict(os.environ, EDGECPM_LOG_DIR=str(tmp_path / "logs"), **(extra_env or {}))
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(blocked=module, argv=argv)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )


def test_missing_plot_library_is_one_line_naming_the_extra(tmp_path) -> None:
    proc = run_cli_without("matplotlib", ["quickstart", "--out", str(tmp_path / "qs")], tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "edgecpm[report]" in lines[0] and "matplotlib" in lines[0]
    assert not (tmp_path / "qs").exists(), "nothing is written before the check"


def test_missing_onnx_is_one_line_naming_the_extra(tmp_path, tiny_tied) -> None:
    proc = run_cli_without(
        "onnx", ["export", str(tiny_tied), "--format", "onnx", "--out", str(tmp_path / "o")], tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "edgecpm[onnx]" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


CRASH = """
import sys
import edgecpm.commands.devices as devices
def broken(args):
    raise RuntimeError("simulated bug\\nsecond line")
devices.run = broken
from edgecpm.cli import main
sys.exit(main(["devices"]))
"""


def test_internal_error_is_one_line_with_the_log_path(tmp_path) -> None:
    import os

    env = dict(os.environ, EDGECPM_LOG_DIR=str(tmp_path / "logs"))
    proc = subprocess.run([sys.executable, "-c", CRASH], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgecpm: internal error: RuntimeError: simulated bug"), lines
    logs = list((tmp_path / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in lines[0]
    assert "Traceback" in logs[0].read_text() and "simulated bug" in logs[0].read_text()
