"""MiniCPM-SALA (lightning + softmax layers) in GGUF: stored under edgecpm's own architecture for edgecpm's torch
backend, which runs it like the checkpoint; llama.cpp itself cannot load it, and edgecpm says so.

Independent checks: the file's tensors are read back with gguf-py's reader and compared with the checkpoint's
safetensors; the GGUF-loaded model is compared with one full-sequence forward of the reference model on the
original checkpoint (no cache: the chunked lightning kernel), for chunked prefill, decode and step-by-step decode.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import edgecpm
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.gguf_exporter import export
from edgecpm.model import Model
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint
from edgecpm.weights import open_checkpoint
from tests.tiny_sparse import SALA, SALA_SPARSE


def _reference(ckpt: Path, ids: np.ndarray) -> np.ndarray:
    config, source = open_checkpoint(ckpt)
    with torch.no_grad():
        return Model.from_source(config, source)(torch.as_tensor(ids)[None])[0].numpy()


def _checkpoint_tensors(ckpt: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        out.update({k: v.float().numpy() for k, v in load_file(str(f)).items()})
    return out


@pytest.fixture(scope="module")
def sala_f32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(cached_checkpoint(SALA), tmp_path_factory.mktemp("gguf_sala") / "art", "f32", progress=False).path


def test_file_holds_every_checkpoint_tensor_and_the_config(sala_f32: Path) -> None:
    reader = gguf.GGUFReader(str(sala_f32 / "model.gguf"))
    assert reader.fields["general.architecture"].contents() == "edgecpm-sala"
    stored = json.loads(reader.fields["edgecpm-sala.edgecpm.config"].contents())
    assert [s["attention"] for s in stored["layers"]] == ["dense", "lightning", "dense", "lightning"]
    got = {t.name: np.asarray(t.data, dtype=np.float32).reshape(tuple(reversed(t.shape))) for t in reader.tensors}
    want = _checkpoint_tensors(cached_checkpoint(SALA))
    assert len(got) == len(want)
    for hf, w in want.items():
        name = _gguf_name(hf)
        assert name in got, name
        np.testing.assert_array_equal(got[name], w, err_msg=hf)


# llama.cpp's names for the tensors it knows (llama-arch.cpp); the rest keep their HF name after "blk.N."
_LLAMACPP_BLOCK_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _gguf_name(hf: str) -> str:
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{_LLAMACPP_BLOCK_NAMES.get(rest, rest)}"


def _chunked_and_stepwise(backend, ids: np.ndarray, split: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every position after prefill(ids[:split]) + one decode per token, and the last logits of a
    1-token prefill followed by token-by-token decode."""
    chunked = np.concatenate(
        [backend.prefill(ids[:split].tolist(), all_logits=True)] + [backend.decode([int(t)]) for t in ids[split:]]
    )
    backend.prefill(ids[:1].tolist())
    stepwise = [backend.decode([int(t)])[-1] for t in ids[1:]][-1]
    return chunked, stepwise


@pytest.mark.parametrize("spec", [SALA, SALA_SPARSE], ids=["sala", "sala_sparse"])
def test_torch_backend_runs_the_gguf_like_the_reference(spec: SyntheticSpec, tmp_path: Path) -> None:
    ckpt = cached_checkpoint(spec)
    art = export(ckpt, tmp_path / "art", "f32", progress=False).path
    lm = edgecpm.load(art)  # auto: llama.cpp cannot run it, so the torch backend does
    assert lm.backend.name == "torch" and lm.config.has_lightning_layers
    ids = np.random.default_rng(6).integers(3, 600, 48)
    want = _reference(ckpt, ids)
    chunked, stepwise = _chunked_and_stepwise(lm.backend, ids, 30)
    assert np.abs(chunked - want).max() < 1e-3
    assert np.abs(stepwise - want[-1]).max() < 1e-3


def test_q8_0_gguf_is_smaller_and_close_to_the_reference(sala_f32: Path, tmp_path: Path) -> None:
    ckpt = cached_checkpoint(SALA)
    q8 = export(ckpt, tmp_path / "q8", "q8_0", progress=False).path
    assert (q8 / "model.gguf").stat().st_size < 0.4 * (sala_f32 / "model.gguf").stat().st_size
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(q8 / "model.gguf")).tensors}
    assert types["blk.1.self_attn.z_proj.weight"] == "Q8_0" and types["blk.1.self_attn.q_norm.weight"] == "F32"
    ids = np.random.default_rng(2).integers(3, 600, 32)
    want = _reference(ckpt, ids)
    got = edgecpm.load(q8 / "model.gguf").backend.prefill(ids.tolist(), all_logits=True)
    # Q8_0 rounds each weight to 1/254 of its 32-block's largest magnitude: a few percent of the logit range
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def test_llamacpp_quantizer_schemes_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(EdgecpmError, match="q4_k_m is made by llama.cpp's quantizer"):
        export(cached_checkpoint(SALA), tmp_path / "k", "q4_k_m", progress=False)
    assert not (tmp_path / "k").exists()


def test_llamacpp_cannot_load_it_and_edgecpm_says_so(sala_f32: Path) -> None:
    pytest.importorskip("llama_cpp")
    model = sala_f32 / "model.gguf"
    # llama.cpp itself (in its own process, so a crash could not take pytest down) refuses the architecture
    probe = (
        "import sys, llama_cpp\n"
        "try:\n"
        f"    llama_cpp.Llama(model_path={str(model)!r}, verbose=False)\n"
        "except ValueError as e:\n"
        "    sys.exit(3)\n"
    )
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120).returncode == 3
    with pytest.raises(EdgecpmError, match="llama.cpp backend cannot run model.gguf: llama.cpp has no lightning"):
        edgecpm.load(model, backend="llama.cpp")
    run = subprocess.run(
        [sys.executable, "-m", "edgecpm", "generate", str(sala_f32), "--backend", "llama.cpp", "--prompt", "hello"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "edgecpm's torch backend runs" in run.stderr


def test_planner_does_not_plan_llamacpp_for_it(sala_f32: Path) -> None:
    p = edgecpm.plan(sala_f32 / "model.gguf", "x86-64-laptop", context=512)
    by_backend = {c.backend: c for c in p.candidates}
    assert "cannot run this model" in (by_backend["llama.cpp"].rejected or "")
    assert p.choice.backend != "llama.cpp"
