"""Weight sources: sharded safetensors, GGUF, and every bad-input path with a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import edgecpm
from edgecpm.errors import EdgecpmError
from edgecpm.weights import SafetensorsSource, open_checkpoint


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_sharded_safetensors_lazy_reads_match_safetensors_library(tiny_untied) -> None:
    source = SafetensorsSource.from_dir(tiny_untied)
    assert len(source.files) == 3
    for f in source.files:
        for name, t in load_file(str(f)).items():
            got = source.get(name)
            assert got.dtype == t.dtype == torch.bfloat16
            assert torch.equal(got, t)


def test_no_pickle_is_ever_loaded(tmp_path) -> None:
    torch.save({"x": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EdgecpmError, match="never unpickles"):
        open_checkpoint(tmp_path)


def test_truncated_shard(tiny_tied, tmp_path) -> None:
    d = _copy(tiny_tied, tmp_path / "ckpt")
    shard = sorted(d.glob("*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(EdgecpmError, match=r"truncated"):
        edgecpm.load(d)


def test_missing_shard(tiny_tied, tmp_path) -> None:
    d = _copy(tiny_tied, tmp_path / "ckpt")
    sorted(d.glob("*.safetensors"))[0].unlink()
    with pytest.raises(EdgecpmError, match="shard missing"):
        edgecpm.load(d)


def test_shape_mismatch_is_named(tiny_tied, tmp_path) -> None:
    d = _copy(tiny_tied, tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgecpmError, match=r"mlp\.(gate|up|down)_proj\.weight' has shape"):
        edgecpm.load(d)


def test_missing_tensor_is_named(tiny_tied, tmp_path) -> None:
    from safetensors.torch import save_file

    d = _copy(tiny_tied, tmp_path / "ckpt")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    victim = "model.layers.1.mlp.up_proj.weight"
    shard = d / index["weight_map"].pop(victim)
    tensors = load_file(str(shard))
    del tensors[victim]
    save_file(tensors, str(shard))
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(EdgecpmError, match="up_proj.weight' is missing"):
        edgecpm.load(d)


def test_missing_path_and_missing_config(tmp_path) -> None:
    with pytest.raises(EdgecpmError, match="not found"):
        edgecpm.load(tmp_path / "nope")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(EdgecpmError):
        edgecpm.load(tmp_path)


def test_corrupt_gguf(tmp_path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(EdgecpmError, match="not a valid GGUF"):
        edgecpm.load(bad)
    (tmp_path / "notgguf.gguf").write_bytes(b"hello world, not a gguf file at all")
    with pytest.raises(EdgecpmError, match="not a valid GGUF"):
        edgecpm.load(tmp_path / "notgguf.gguf")


def test_unknown_gguf_architecture(tmp_path) -> None:
    import gguf

    path = tmp_path / "falcon.gguf"
    w = gguf.GGUFWriter(str(path), "falcon")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(EdgecpmError, match="architecture 'falcon' is not supported"):
        edgecpm.load(path)


def test_gguf_source_undoes_llamacpp_permutation(smollm2_path) -> None:
    """The de-permuted q/k rows run correctly: llama.cpp and our torch model agree on the real model
    (checked at scale in test_smollm2.py); here the permutation itself must round-trip."""
    from edgecpm.weights.gguf_source import permute_for_llamacpp, unpermute_from_llamacpp

    w = np.arange(8 * 2 * 4 * 3, dtype=np.float32).reshape(8 * 2 * 4 // 2, 6)
    assert np.array_equal(unpermute_from_llamacpp(permute_for_llamacpp(w, 4), 4), w)
    config, source = open_checkpoint(smollm2_path)
    assert config.architecture == "llama" and config.tie_word_embeddings
    assert source.shape("model.layers.0.self_attn.k_proj.weight") == (192, 576)
