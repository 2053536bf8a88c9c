"""Bad input to the ExecuTorch exporter and backend: one-line `EdgecpmError`s, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("executorch.runtime")

import edgecpm  # noqa: E402
from edgecpm.cli import main  # noqa: E402
from edgecpm.errors import EdgecpmError  # noqa: E402
from edgecpm.exporters import executorch_lower  # noqa: E402
from edgecpm.exporters.registry import run_export  # noqa: E402
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return cached_checkpoint(SyntheticSpec())


@pytest.mark.parametrize(
    "options,match",
    [
        ({"quant": "q4_0"}, "unknown quant"),
        ({"max_seq_len": 0}, "max_seq_len"),
        ({"max_seq_len": 32, "max_context_len": 16}, "max_context_len"),
        ({"max_context_len": 10**6}, "max_position_embeddings"),
        ({"group_size": -1, "quant": "8da4w"}, "group size"),
        ({"bogus": 1}, "unknown ExecuTorch export option"),
    ],
)
def test_bad_options(checkpoint: Path, tmp_path: Path, options: dict, match: str) -> None:
    with pytest.raises(EdgecpmError, match=match) as info:
        run_export(checkpoint, "executorch", tmp_path / "out", progress=False, **options)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*"))


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(EdgecpmError, match="not found"):
        run_export(tmp_path / "missing", "executorch", tmp_path / "out", progress=False)
    nope = cached_checkpoint(
        SyntheticSpec(
            sparse_config={
                "kernel_size": 8,
                "kernel_stride": 4,
                "block_size": 8,
                "window_size": 16,
                "topk": 2,
                "dense_len": -1,
                "use_nope": True,
            }
        )
    )
    with pytest.raises(EdgecpmError, match="use_nope"):
        run_export(nope, "executorch", tmp_path / "out", progress=False, max_context_len=64, max_seq_len=8)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*"))


def test_refuses_to_replace_a_foreign_folder(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert main(["export", str(checkpoint), "--format", "executorch", "--out", str(out)]) == 2
    assert (out / "thesis.tex").read_text() == "precious"


def test_interrupted_export_leaves_nothing_and_keeps_old_artifact(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgecpm.config import preset_config
    from edgecpm.exporters.manifest import make_manifest

    out = tmp_path / "art"
    out.mkdir()  # an earlier executorch artifact at the destination (the only kind an export replaces)
    make_manifest("executorch", "fp32", preset_config("minicpm4-0.5b"), ["model.pte"], "sha256:0").write(out)
    before = (out / "edgecpm.json").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(executorch_lower, "lower_to_pte", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_export(checkpoint, "executorch", out, progress=False, max_context_len=64, max_seq_len=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert (out / "edgecpm.json").read_text() == before


def test_backend_refuses_missing_program(tmp_path: Path) -> None:
    from edgecpm.config import preset_config
    from edgecpm.exporters.manifest import make_manifest

    make_manifest(
        "executorch",
        "fp32",
        preset_config("minicpm4-0.5b"),
        ["model.pte"],
        "sha256:0",
        max_seq_len=8,
        max_context_len=64,
    ).write(tmp_path)
    with pytest.raises(EdgecpmError, match="missing"):
        edgecpm.load(tmp_path)
    (tmp_path / "model.pte").write_bytes(b"not a program")
    with pytest.raises(EdgecpmError, match="cannot load"):
        edgecpm.load(tmp_path, backend="executorch")
