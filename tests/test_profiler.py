"""`edgecpm profile`: measurements, fidelity against llama.cpp, the report files and the host calibration."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import edgecpm
from edgecpm.cli import main
from edgecpm.errors import EdgecpmError
from edgecpm.profiling import report as report_mod

PNG = b"\x89PNG\r\n\x1a\n"
FAST = dict(contexts=(16, 48), decode_tokens=4, fidelity_tokens=32, progress=False)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("calibration")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_tied, tmp_path_factory):
    """The tiny checkpoint exported to an f32 GGUF: torch and llama.cpp both run it."""
    pytest.importorskip("edgecpm.exporters.gguf_exporter")
    out = tmp_path_factory.mktemp("gguf") / "art"
    edgecpm.export(tiny_tied, format="gguf", out=out, quant="f32", progress=False)
    from edgecpm.exporters.manifest import read_manifest

    return out / read_manifest(out).model_files[0]


@pytest.fixture(scope="module")
def gguf_report(tiny_gguf, calib_dir, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGECPM_CALIBRATION_DIR", str(calib_dir))
    out = tmp_path_factory.mktemp("report")
    try:
        rep = edgecpm.profile(tiny_gguf, device="host", out=out, **FAST)
    finally:
        mp.undo()
    return rep, out


def test_profile_measures_every_backend_and_agrees_with_llamacpp(gguf_report):
    rep, _ = gguf_report
    from edgecpm.backends.registry import available_backends

    names = [r["backend"] for r in rep["backends"]]
    assert names[-1] == "torch" and ("llama.cpp" in names) == ("llama.cpp" in available_backends())
    for r in rep["backends"]:
        assert r["load_seconds"] > 0 and r["peak_rss_bytes"] >= r["baseline_rss_bytes"] > 0
        assert [t["context"] for t in r["timings"]] == [16, 48]
        assert all(t["decode_tokens_per_s"] > 0 and t["prefill_tokens_per_s"] > 0 for t in r["timings"])
        assert np.isfinite(r["fidelity"]["perplexity"])
    if "llama.cpp" in names:  # an independent runtime on the same f32 weights and tokens
        fid = rep["backends"][names.index("llama.cpp")]["fidelity"]
        assert fid["top1_agreement"] >= 0.9
        assert abs(fid["perplexity_delta"]) < 0.05 * fid["reference_perplexity"]


def test_report_files_and_real_pngs(gguf_report):
    rep, out = gguf_report
    for name in ("report.html", "report.json", "report.md"):
        assert (out / name).is_file()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    parser = _Images()
    parser.feed((out / "report.html").read_text())
    assert len(parser.srcs) == 3
    import matplotlib.image as mpimg

    for src, name in zip(parser.srcs, report_mod.PLOTS):
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        assert data.startswith(PNG) and data == (out / "plots" / f"{name}.png").read_bytes()
        image = mpimg.imread(io.BytesIO(data), format="png")
        assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 0.01  # decodes, not blank
    md = (out / "report.md").read_text()
    for name in report_mod.PLOTS:
        assert f"(plots/{name}.png)" in md
    d = json.loads((out / "report.json").read_text())
    assert d["schema"] == "edgecpm.profile/1" and d["backends"][0]["timings"]
    assert str(out / "report.html") in d["files"]


def test_sparse_models_get_a_dense_attention_curve(gguf_report):
    """Only an InfLLM v2 model has a dense-attention prediction; when present it is drawn beside the others."""
    import copy

    rep, _ = gguf_report
    for entry in rep["calibration"]["backends"].values():
        assert all(p["predicted_decode_dense_calibrated"] is None for p in entry["predictions"])
    with_dense = copy.deepcopy(rep)
    for entry in with_dense["calibration"]["backends"].values():
        for p in entry["predictions"]:
            p["predicted_decode_dense_calibrated"] = 0.5 * p["predicted_decode_calibrated"]
    import matplotlib.image as mpimg

    plain = mpimg.imread(io.BytesIO(report_mod.make_plots(rep)["tokens_vs_context"]), format="png")
    drawn = mpimg.imread(io.BytesIO(report_mod.make_plots(with_dense)["tokens_vs_context"]), format="png")
    assert plain.shape == drawn.shape and np.abs(plain - drawn).sum() > 100  # extra lines and legend entries


def test_calibration_is_stored_and_used_by_plan(gguf_report, calib_dir, monkeypatch):
    rep, _ = gguf_report
    monkeypatch.setenv("EDGECPM_CALIBRATION_DIR", str(calib_dir))
    stored = json.loads(Path(rep["calibration"]["stored"]).read_text())
    assert "torch/f32" in stored["backends"]
    plan = edgecpm.plan("minicpm4-0.5b", "host", backend="torch", quant="f32", context=256)
    assert plan.choice.prediction.coefficients.source.startswith("calibrated on this host")
    c = stored["backends"]["torch/f32"]["coefficients"]
    assert plan.choice.prediction.coefficients.bandwidth_efficiency == c["bandwidth_efficiency"]


def test_interrupted_write_leaves_no_partial_report(gguf_report, tmp_path, monkeypatch):
    rep, _ = gguf_report

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_mod.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        report_mod.write_report(rep, tmp_path / "r")
    assert not [p for p in (tmp_path / "r").rglob("*") if p.is_file()]


def test_cli_profile_shows_progress_and_json_is_quiet(tiny_tied, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGECPM_CALIBRATION_DIR", str(tmp_path / "cal"))
    args = [
        "profile",
        str(tiny_tied),
        "--out",
        str(tmp_path / "r"),
        "--contexts",
        "16,32",
        "--decode-tokens",
        "3",
        "--fidelity-tokens",
        "24",
        "--no-calibrate",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "profiling" in captured.err and "report.html" in captured.out
    assert not (tmp_path / "cal").exists()
    assert main(args + ["--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["backends"][0]["backend"] == "torch" and "profiling" not in captured.err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(device="snapdragon-8-gen3"), "profile measures this machine"),
        (dict(contexts=(10**6,)), "exceeds the model's"),
        (dict(backends=["onnxruntime"]), "cannot run this model here"),
        (dict(decode_tokens=1), "at least 2"),
    ],
)
def test_bad_profile_requests(tiny_tied, tmp_path, kwargs, message):
    with pytest.raises(EdgecpmError, match=message):
        edgecpm.profile(tiny_tied, out=tmp_path, **{**FAST, **kwargs})
    assert not list(tmp_path.iterdir())


def test_preset_and_file_out_are_refused(tiny_tied, tmp_path):
    with pytest.raises(EdgecpmError, match="preset without weights"):
        edgecpm.profile("minicpm4-8b", out=tmp_path)
    target = tmp_path / "file"
    target.write_text("x")
    assert (
        main(
            [
                "profile",
                str(tiny_tied),
                "--out",
                str(target),
                "--contexts",
                "16",
                "--decode-tokens",
                "2",
                "--fidelity-tokens",
                "16",
                "--no-calibrate",
            ]
        )
        == 2
    )


def test_artifact_is_profiled_on_its_runtime_against_a_reference(tiny_tied, tmp_path, monkeypatch):
    """An ONNX artifact runs on onnxruntime; fidelity is checked against the torch reference of its source."""
    pytest.importorskip("edgecpm.exporters.onnx_exporter")
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("EDGECPM_CALIBRATION_DIR", str(tmp_path / "cal"))
    edgecpm.export(tiny_tied, format="onnx", out=tmp_path / "onnx", quant="fp32", progress=False)
    rep = edgecpm.profile(tmp_path / "onnx", reference=tiny_tied, **FAST)
    (r,) = rep["backends"]
    assert r["backend"] == "onnxruntime" and r["fidelity"]["reference"] == "torch"
    assert r["fidelity"]["top1_agreement"] >= 0.9
    assert abs(r["fidelity"]["perplexity_delta"]) < 0.05 * r["fidelity"]["reference_perplexity"]


def test_report_renders_in_headless_chromium(gguf_report, tmp_path):
    """The page as a person sees it: headless Chromium renders it, and its plots show (coloured pixels of the
    matplotlib lines), not just text. Skipped where no Chromium is installed (`apt-get install chromium`)."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless Chromium on this machine")
    _, out = gguf_report
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,4000",
            f"--screenshot={shot}",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    import matplotlib.image as mpimg

    page = mpimg.imread(str(shot))[..., :3]
    # matplotlib's default blue (#1f77b4) and orange (#ff7f0e) appear only inside the rendered plots
    blue = (np.abs(page - np.array([0x1F, 0x77, 0xB4]) / 255).max(-1) < 0.08).sum()
    orange = (np.abs(page - np.array([0xFF, 0x7F, 0x0E]) / 255).max(-1) < 0.08).sum()
    assert blue > 200 and blue + orange > 400, (blue, orange)
