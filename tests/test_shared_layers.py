"""Shared-layer models as ODE steps, in every format.

* Config: fully shared, ALBERT-style cycles and contiguous groups, and partially shared groups parse into a
  logical -> stored layer map; bad layouts and step counts fail with one message naming the valid values.
* `ode_steps=N`: the reference model equals an independent float64 forward Euler written out here (one block
  applied N times with residual scale scale_depth/sqrt(L) * L/N).
* onnxruntime, the ExecuTorch runtime and llama.cpp run an `ode_steps` export and match the reference model;
  ONNX and ExecuTorch store a shared block once (the artifact shrinks by (L-1) blocks).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edgecpm
from edgecpm.config import ConfigError, config_from_hf_dict
from edgecpm.exporters.registry import run_export
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
from tests import float64_reference as f64

L = 8
FULL = SyntheticSpec(num_layers=L, shared_unique_layers=1, seed=11)
# layers 1..6 share layer 1's weights, 0 and 7 are their own (partially shared)
PARTIAL = SyntheticSpec(num_layers=L, seed=12, extra_config={"shared_layers": {"groups": [[1, 2, 3, 4, 5, 6]]}})
# the same shapes with every layer stored (the size comparison)
WIDE_SHARED = SyntheticSpec(hidden_size=128, intermediate_size=512, num_layers=L, shared_unique_layers=1, seed=13)
WIDE_UNSHARED = SyntheticSpec(hidden_size=128, intermediate_size=512, num_layers=L, seed=13)


def _ids(n: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(5).integers(3, 600, n)]


def _float64(ckpt: Path, ids: list[int], schedule: list[tuple[int, float]]) -> np.ndarray:
    cfg, w = f64.load_checkpoint(ckpt)
    return f64.forward(cfg, w, ids, schedule=schedule)


def _base_config(**shared) -> dict:
    from edgecpm.synthetic import config_dict

    d = config_dict(SyntheticSpec(num_layers=L), 608)
    d["shared_layers"] = shared
    return d


def test_sharing_layouts_are_data() -> None:
    cycle = config_from_hf_dict(_base_config(num_unique_layers=2))
    assert [s.weight_layer for s in cycle.layers] == [0, 1] * 4
    assert cycle.valid_ode_steps(8) == [2, 4, 6, 8]  # whole cycles of the 2-layer block
    block = config_from_hf_dict(_base_config(num_unique_layers=2, order="block"))  # ALBERT num_hidden_groups
    assert [s.weight_layer for s in block.layers] == [0, 0, 0, 0, 4, 4, 4, 4]
    partial = config_from_hf_dict(_base_config(groups=[[1, 2, 3, 4, 5, 6]]))
    assert [s.weight_layer for s in partial.layers] == [0, 1, 1, 1, 1, 1, 1, 7]
    assert partial.num_weight_layers == 3
    stepped = partial.with_ode_steps(5)
    assert [(s.weight_layer, s.step) for s in stepped.layers] == [(0, 1.0), (1, 2.0), (1, 2.0), (1, 2.0), (7, 1.0)]
    assert stepped.trained_layers == L and stepped.ode_steps == 5


@pytest.mark.parametrize(
    "shared, match",
    [
        ({"groups": [[1, 1]]}, "repeats a layer"),
        ({"groups": [[3]]}, r"groups\[0\]"),
        ({"num_unique_layers": 2, "order": "zigzag"}, "order"),
        ({"num_unique_layers": 3}, "divisor"),
    ],
)
def test_bad_sharing_layouts_name_the_field(shared: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_hf_dict(_base_config(**shared))


def test_bad_ode_steps_list_the_valid_ones() -> None:
    cycle = config_from_hf_dict(_base_config(num_unique_layers=2))
    with pytest.raises(ConfigError, match="expected one of 2, 4, 6"):
        cycle.with_ode_steps(3)
    plain = config_from_hf_dict({k: v for k, v in _base_config().items() if k != "shared_layers"})
    with pytest.raises(ConfigError, match="no weight-shared layers"):
        plain.with_ode_steps(4)
    with pytest.raises(ConfigError, match="already integrated"):
        cycle.with_ode_steps(4).with_ode_steps(2)


@pytest.mark.parametrize("steps", [8, 4, 2])
def test_ode_steps_are_forward_euler_on_the_shared_block(steps: int) -> None:
    ckpt = cached_checkpoint(FULL)
    ids = _ids(12)
    got = edgecpm.load(ckpt, ode_steps=steps).logits(ids)
    want = _float64(ckpt, ids, [(0, L / steps)] * steps)
    assert np.abs(got - want).max() < 1e-3 * max(1.0, np.abs(want).max())


def test_partially_shared_ode_steps_keep_the_unshared_layers() -> None:
    ckpt = cached_checkpoint(PARTIAL)
    ids = _ids(12)
    got = edgecpm.load(ckpt, ode_steps=5).logits(ids)
    want = _float64(ckpt, ids, [(0, 1.0), (1, 2.0), (1, 2.0), (1, 2.0), (7, 1.0)])
    assert np.abs(got - want).max() < 1e-3 * max(1.0, np.abs(want).max())
    full = edgecpm.load(ckpt).logits(ids)
    assert np.abs(full - _float64(ckpt, ids, [(0, 1.0)] + [(1, 1.0)] * 6 + [(7, 1.0)])).max() < 1e-3 * max(
        1.0, np.abs(full).max()
    )


def _prefill_decode(backend, ids: list[int], prompt: int) -> np.ndarray:
    rows = [np.asarray(backend.prefill(ids[:prompt]))[None]]
    rows += [np.asarray(backend.decode([t]))[-1:] for t in ids[prompt:]]
    return np.concatenate(rows)


@pytest.mark.parametrize("ckpt_spec, steps", [(FULL, 4), (PARTIAL, 5)], ids=["full", "partial"])
def test_onnx_ode_steps_export_matches_reference(ckpt_spec: SyntheticSpec, steps: int, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    ckpt = cached_checkpoint(ckpt_spec)
    art = run_export(ckpt, "onnx", tmp_path / "onnx", quant="fp32", progress=False, ode_steps=steps)
    ids = _ids(14)
    lm = edgecpm.load(art.path)
    assert lm.config.num_layers == steps
    ref = edgecpm.load(ckpt, ode_steps=steps)
    got, want = _prefill_decode(lm.backend, ids, 10), _prefill_decode(ref.backend, ids, 10)
    assert np.abs(got - want).max() < 1e-3
    with pytest.raises(edgecpm.EdgecpmError, match="fixed at export"):
        edgecpm.load(art.path, ode_steps=2)


def _onnx_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith("model.onnx"))


def _layer_bytes(ckpt: Path) -> int:
    """fp32 bytes of one stored decoder layer (what sharing saves per extra logical layer)."""
    cfg, w = f64.load_checkpoint(ckpt)
    return sum(a.size * 4 for n, a in w.items() if n.startswith("model.layers.0."))


def test_onnx_stores_a_shared_block_once(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    shared = run_export(cached_checkpoint(WIDE_SHARED), "onnx", tmp_path / "s", quant="fp32", progress=False)
    unshared = run_export(cached_checkpoint(WIDE_UNSHARED), "onnx", tmp_path / "u", quant="fp32", progress=False)
    a, b = _onnx_bytes(shared.path), _onnx_bytes(unshared.path)
    saved = (L - 1) * _layer_bytes(cached_checkpoint(WIDE_UNSHARED))
    assert abs((b - a) - saved) < 0.02 * saved, (a, b, saved)
    import onnx

    model = onnx.load(str(shared.path / "model.onnx"), load_external_data=False)
    inits = [t.name for t in model.graph.initializer if t.name.startswith("model.layers.")]
    assert "model.layers.0.mlp.down.fp32" in inits and not [n for n in inits if not n.startswith("model.layers.0")]
    uses = [i for n in model.graph.node for i in n.input if i == "model.layers.0.mlp.down.fp32"]
    assert len(uses) == L  # one initializer, referenced by every logical layer


def test_executorch_ode_steps_export_matches_reference(tmp_path: Path) -> None:
    pytest.importorskip("executorch.runtime")
    ckpt = cached_checkpoint(FULL)
    art = tmp_path / "et"
    run_export(ckpt, "executorch", art, quant="fp32", progress=False, max_seq_len=16, max_context_len=32, ode_steps=4)
    ids = _ids(14)
    lm = edgecpm.load(art)
    assert lm.config.num_layers == 4
    ref = edgecpm.load(ckpt, ode_steps=4)
    got, want = _prefill_decode(lm.backend, ids, 10), _prefill_decode(ref.backend, ids, 10)
    assert np.abs(got - want).max() < 1e-3


@pytest.mark.slow
def test_executorch_stores_a_shared_block_once(tmp_path: Path) -> None:
    pytest.importorskip("executorch.runtime")
    sizes = {}
    for name, spec in (("s", WIDE_SHARED), ("u", WIDE_UNSHARED)):
        run_export(
            cached_checkpoint(spec),
            "executorch",
            tmp_path / name,
            quant="fp32",
            progress=False,
            max_seq_len=16,
            max_context_len=32,
        )
        sizes[name] = (tmp_path / name / "model.pte").stat().st_size
    saved = (L - 1) * _layer_bytes(cached_checkpoint(WIDE_UNSHARED))
    assert abs((sizes["u"] - sizes["s"]) - saved) < 0.02 * saved, (sizes, saved)


def test_gguf_ode_steps_run_on_llamacpp_and_keep_sharing_for_edgecpm(tmp_path: Path) -> None:
    from tests.gguf_common import llamacpp_logits

    ckpt = cached_checkpoint(FULL)
    art = run_export(ckpt, "gguf", tmp_path / "g", quant="f32", progress=False, ode_steps=4)
    ids = _ids(16)
    want = edgecpm.load(ckpt, ode_steps=4).logits(ids)
    assert np.abs(llamacpp_logits(art.model_file, ids) - want).max() < 5e-3 * max(1.0, np.abs(want).max())
    torch_lm = edgecpm.load(art.model_file, backend="torch", ode_steps=2)  # edgecpm's loader keeps the map
    assert torch_lm.config.num_weight_layers == 1
    twice = _float64(ckpt, ids, [(0, L / 2)] * 2)
    assert np.abs(torch_lm.logits(ids) - twice).max() < 1e-3 * max(1.0, np.abs(twice).max())


def test_gguf_refuses_a_step_size_llamacpp_cannot_express(tmp_path: Path) -> None:
    with pytest.raises(edgecpm.EdgecpmError, match="one residual scale"):
        run_export(cached_checkpoint(PARTIAL), "gguf", tmp_path / "g", quant="f32", progress=False, ode_steps=5)
    assert not (tmp_path / "g").exists()


def test_config_dict_round_trip_keeps_steps() -> None:
    cfg = config_from_hf_dict(_base_config(groups=[[1, 2, 3, 4, 5, 6]])).with_ode_steps(5)
    back = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.layer_residual_scale(1) == pytest.approx(2 * cfg.residual_scale)
    assert torch.isfinite(torch.tensor(back.residual_scale))
