"""Bad input to the GGUF exporter: one clear error, and nothing left behind (not even after an interrupt)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import edgecpm
from edgecpm.exporters import gguf_exporter

pytest.importorskip("llama_cpp")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecpm", *args], capture_output=True, text=True, timeout=300)


def test_unknown_quant_api_and_cli(tiny_tied, tmp_path) -> None:
    with pytest.raises(edgecpm.EdgecpmError, match="unknown quant 'q3_xx'"):
        edgecpm.export(tiny_tied, format="gguf", out=tmp_path / "o", quant="q3_xx")
    r = run_cli("export", str(tiny_tied), "--format", "gguf", "--quant", "q3_xx", "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]  # one line
    assert "unknown quant 'q3_xx'" in r.stderr and "q4_k_m" in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["parent_is_file", "parent_missing", "nonempty_folder", "folder_as_file"])
def test_unwritable_output_path(case, tiny_tied, tmp_path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = {
        "parent_is_file": blocker / "out",
        "parent_missing": tmp_path / "no" / "such" / "out",
        "nonempty_folder": tmp_path,
        "folder_as_file": tmp_path / "dir.gguf",
    }[case]
    if case == "folder_as_file":
        out.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(edgecpm.EdgecpmError, match="cannot write|not empty|is a folder"):
        edgecpm.export(tiny_tied, format="gguf", out=out, quant="f16", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_source(tmp_path) -> None:
    with pytest.raises(edgecpm.EdgecpmError, match="not found"):
        edgecpm.export(tmp_path / "nope", format="gguf", out=tmp_path / "o", quant="f16")


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_interrupted_export_leaves_nothing(quant, tiny_tied, tmp_path, monkeypatch) -> None:
    real = gguf_exporter._tensor_bytes
    calls = {"n": 0}

    def interrupt_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf_exporter, "_tensor_bytes", interrupt_midway)
    with pytest.raises(KeyboardInterrupt):
        edgecpm.export(tiny_tied, format="gguf", out=tmp_path / "o", quant=quant, progress=False)
    assert calls["n"] == 10
    assert list(tmp_path.iterdir()) == []


def test_interrupted_quantizer_keeps_previous_artifact(tiny_tied, tmp_path, monkeypatch) -> None:
    out = tmp_path / "art"
    edgecpm.export(tiny_tied, format="gguf", out=out, quant="q8_0", progress=False)
    before = (out / "model.gguf").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_exporter, "llamacpp_quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        edgecpm.export(tiny_tied, format="gguf", out=out, quant="q6_k", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert (out / "model.gguf").read_bytes() == before


def test_cli_interrupt_exits_130_and_cleans_up(tiny_tied, tmp_path) -> None:
    code = (
        "import sys, edgecpm.exporters.gguf_exporter as g\n"
        "real = g._tensor_bytes\n"
        "n = [0]\n"
        "def f(*a, **k):\n"
        "    n[0] += 1\n"
        "    if n[0] == 5: raise KeyboardInterrupt\n"
        "    return real(*a, **k)\n"
        "g._tensor_bytes = f\n"
        "from edgecpm.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "export",
            str(tiny_tied),
            "--format",
            "gguf",
            "--quant",
            "f16",
            "--out",
            str(tmp_path / "o"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 130, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_export_json(tiny_tied, tmp_path) -> None:
    import json

    r = run_cli("export", str(tiny_tied), "--format", "gguf", "--quant", "q5_1", "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["quant"] == "q5_1" and info["format"] == "gguf"
    assert "export gguf" not in r.stderr  # no progress bar under --json
    assert (tmp_path / "o" / "model.gguf").is_file() and (tmp_path / "o" / "edgecpm.json").is_file()
