"""Every script in examples/ runs on a tiny checkpoint (in-process through runpy, as `python examples/X.py`)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str, capsys: pytest.CaptureFixture[str]) -> str:
    argv = sys.argv
    sys.argv = [str(EXAMPLES / name), *args]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = argv
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny() -> str:
    return str(cached_checkpoint(SyntheticSpec()))


def test_chat(tiny: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_example("chat.py", tiny, "--prompt", "Hi!", "--prompt", "Again?", "--max-new-tokens", "4", capsys=capsys)
    assert "> Hi!" in out and "> Again?" in out and "on torch" in out


def test_export_compare(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("executorch.runtime")
    pytest.importorskip("onnxruntime")
    out = run_example("export_compare.py", "--out", str(tmp_path), capsys=capsys)
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {"gguf", "onnx", "executorch"}
    for fmt, cols in rows.items():
        assert float(cols[3]) < 1e-2, fmt  # fp32 artifacts: logits match the torch reference
        assert float(cols[4]) == 1.0, fmt


def test_plan_devices(tiny: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_example("plan_devices.py", tiny, "--context", "512", capsys=capsys)
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["snapdragon-8-gen3", "raspberry-pi-5", "jetson-orin-nano-8gb"]
    assert all("tok/s decode" in line for line in lines)


def test_profile_host(
    tiny: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECPM_CALIBRATION_DIR", str(tmp_path / "calibration"))
    out = run_example(
        "profile_host.py",
        tiny,
        "--out",
        str(tmp_path / "report"),
        "--contexts",
        "16,32",
        "--decode-tokens",
        "4",
        "--fidelity-tokens",
        "16",
        capsys=capsys,
    )
    assert "context    16" in out and "context    32" in out
    assert (tmp_path / "report" / "report.html").is_file()


def test_long_document_sparse(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_example("long_document_sparse.py", "--tokens", "200", "--max-new-tokens", "4", capsys=capsys)
    assert "document: " in out and "at most 80 of " in out  # 3 blocks of 16 + a 32-token window
