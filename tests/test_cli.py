"""CLI behaviour: JSON output, inspect, and one-line errors with exit code 2 (no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecpm", *args], capture_output=True, text=True, timeout=timeout)


def test_generate_json(tiny_tied) -> None:
    out = run("generate", str(tiny_tied), "--prompt", "The game", "--max-new-tokens", "5", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["backend"] == "torch" and len(r["token_ids"]) <= 5 and r["prompt_tokens"] > 0


def test_inspect(tiny_untied) -> None:
    out = run("inspect", str(tiny_untied), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["architecture"] == "minicpm" and info["tied_embeddings"] is False
    assert info["tensor_dtypes"] == {"bfloat16": info["layers"] * 9 + 3}
    assert info["kv_bytes_per_token_bf16"] == 2 * 3 * 2 * 8 * 2
    preset = json.loads(run("inspect", "minicpm4-8b", "--json").stdout)
    assert preset["parameters"] == 8_185_253_888


def test_chat_reads_stdin(tiny_tied) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgecpm", "chat", str(tiny_tied), "--max-new-tokens", "4"],
        input="hello\n\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("generate", "/no/such/model", "--prompt", "x"), "not found"),
        (("inspect", "/no/such/model"), "not found"),
        (("generate", "minicpm4-8b", "--prompt", "x"), "preset without weights"),
        (("generate", "TINY", "--prompt", "x", "--backend", "tpu"), "unknown backend"),
        (("generate", "TINY", "--prompt", "x", "--temperature", "-2"), "temperature"),
    ],
)
def test_errors_are_one_line_exit_2(tiny_tied, args, message) -> None:
    out = run(*[str(tiny_tied) if a == "TINY" else a for a in args])
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and "it/s" not in ln and "loading" not in ln]
    assert len(lines) == 1 and lines[0].startswith("edgecpm: error:") and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_malformed_config_exit_2(tiny_tied, tmp_path) -> None:
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_tied, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_attention_heads"] = "sixteen"
    (d / "config.json").write_text(json.dumps(cfg))
    out = run("generate", str(d), "--prompt", "x")
    assert out.returncode == 2 and "'num_attention_heads'" in out.stderr and "Traceback" not in out.stderr


def test_quickstart_plans_runs_and_exports(tiny_tied, tmp_path) -> None:
    """The README's main job on a checkpoint: a plan, a generation on the planned backend, a GGUF that llama.cpp
    loads (checked by opening it with the llama.cpp backend when it is installed)."""
    out = run(
        "quickstart", str(tiny_tied), "--out", str(tmp_path / "qs"), "--max-new-tokens", "4", "--skip-report", "--json"
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["plan"]["fits"] is True and summary["run"]["new_tokens"] <= 4
    gguf_path = summary["export"]["path"]
    pytest.importorskip("llama_cpp")
    import edgecpm

    m = edgecpm.load(gguf_path, backend="llama.cpp")
    ref = edgecpm.load(tiny_tied)
    ids = ref.tokenizer.encode("The game")
    assert (m.logits(ids).argmax(-1) == ref.logits(ids).argmax(-1)).mean() >= 0.9


def test_gguf_artifact_runs_on_torch_and_llamacpp(tiny_tied, tmp_path) -> None:
    pytest.importorskip("llama_cpp")
    import edgecpm

    art = edgecpm.export(tiny_tied, format="gguf", quant="f32", out=tmp_path / "art", progress=False)
    ids = [1, 30, 31, 200, 5]
    on_torch = edgecpm.load(art.path, backend="torch").logits(ids)
    on_llamacpp = edgecpm.load(art.path).logits(ids)
    assert edgecpm.load(art.path).backend.name == "llama.cpp"
    assert abs(on_torch - on_llamacpp).max() < 5e-3
