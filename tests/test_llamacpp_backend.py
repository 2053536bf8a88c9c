"""The llama.cpp backend behind the `Backend` protocol: checked against llama-cpp-python's own `logits_all`
path, against the torch reference, and for decode / truncate consistency (speculative rollback)."""

from __future__ import annotations

import numpy as np
import pytest

import edgecpm
from edgecpm.backends.base import Backend
from edgecpm.backends.registry import open_backend
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

from .gguf_common import llamacpp_logits, reference_logits, text_ids

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def artifact(tiny_untied, tmp_path_factory):
    out = tmp_path_factory.mktemp("llamacpp") / "f32"
    return edgecpm.export(tiny_untied, format="gguf", out=out, quant="f32", progress=False)


@pytest.fixture(scope="module")
def loaded(artifact):
    return edgecpm.load(artifact.path, threads=1)


def test_artifact_opens_on_llamacpp_with_its_tokenizer(loaded, tiny_untied) -> None:
    assert loaded.backend.name == "llama.cpp"
    assert isinstance(loaded.backend, Backend)
    from edgecpm.tokenizer import load_tokenizer_dir

    hf = load_tokenizer_dir(tiny_untied)
    text = "The tower is 324 metres tall, about the same height as an 81-storey building."
    assert loaded.tokenizer.encode(text) == hf.encode(text)


def test_all_logits_match_llamacpp_direct_and_reference(loaded, artifact, tiny_untied) -> None:
    ids = text_ids(tiny_untied, 80)
    ours = loaded.backend.prefill(ids, all_logits=True)
    assert ours.shape == (80, loaded.config.vocab_size) and ours.dtype == np.float32
    direct = llamacpp_logits(artifact.model_file, ids)
    np.testing.assert_allclose(ours, direct, atol=1e-4, rtol=0)
    assert np.abs(ours - reference_logits(tiny_untied, ids)).max() <= 5e-3
    assert loaded.backend.n_past == 80


def test_prefill_decode_and_truncate_agree_with_one_pass(loaded, tiny_untied) -> None:
    b = loaded.backend
    ids = text_ids(tiny_untied, 40)
    full = b.prefill(ids, all_logits=True)
    last = b.prefill(ids[:20])
    np.testing.assert_allclose(last, full[19], atol=1e-4, rtol=0)
    for i in range(20, 24):  # one token at a time
        np.testing.assert_allclose(b.decode([ids[i]])[0], full[i], atol=1e-4, rtol=0)
    draft = b.decode([5, 6, 7, 8])  # a rejected speculative draft
    assert draft.shape == (4, loaded.config.vocab_size)
    b.truncate(24)
    assert b.n_past == 24
    np.testing.assert_allclose(b.decode(ids[24:40]), full[24:40], atol=1e-4, rtol=0)
    b.reset()
    assert b.n_past == 0
    np.testing.assert_allclose(b.prefill(ids[:3], all_logits=True), full[:3], atol=1e-4, rtol=0)


def test_greedy_generation_matches_torch_backend(loaded, artifact) -> None:
    torch_model = edgecpm.load(artifact.model_file, backend="torch")
    a = loaded.generate_result("The history of the", max_new_tokens=12)
    b = torch_model.generate_result("The history of the", max_new_tokens=12)
    assert a.token_ids == b.token_ids


def test_plain_gguf_path_and_options(artifact) -> None:
    m = edgecpm.load(artifact.model_file, backend="llama.cpp", threads=1, n_ctx=300)
    n_ctx = m.backend.n_ctx
    assert m.backend.name == "llama.cpp" and 300 <= n_ctx < 1024  # llama.cpp pads n_ctx to its granularity
    assert m.backend.llm.context_params.n_threads == 1
    with pytest.raises(edgecpm.EdgecpmError, match=f"exceeds n_ctx={n_ctx}"):
        m.backend.prefill([1] * (n_ctx + 1))
    with pytest.raises(edgecpm.EdgecpmError, match="outside the vocabulary"):
        m.backend.prefill([1, 10**6])
    with pytest.raises(edgecpm.EdgecpmError, match="cannot truncate"):
        m.backend.truncate(5)
    assert edgecpm.load(artifact.model_file).backend.name == "torch"  # auto on a plain .gguf: the reference


def test_hf_checkpoint_is_refused(tiny_untied) -> None:
    with pytest.raises(edgecpm.EdgecpmError, match="runs .gguf files"):
        edgecpm.load(tiny_untied, backend="llama.cpp")


def test_sparse_model_warns_that_llamacpp_runs_dense(tmp_path) -> None:
    src = cached_checkpoint(SyntheticSpec(sparse_config={"topk": 4, "window_size": 128, "dense_len": -1}))
    art = edgecpm.export(src, format="gguf", out=tmp_path / "s", quant="f16", progress=False)
    with pytest.warns(UserWarning, match="runs dense"):
        open_backend("llama.cpp", art.model_file, open_config(art.model_file), None)


def open_config(path):
    from edgecpm.weights import open_checkpoint

    return open_checkpoint(path)[0]


def test_thread_count_comes_from_the_device_profile(artifact) -> None:
    profiles = pytest.importorskip("edgecpm.device_profiles")
    profile = profiles.load_profile("raspberry-pi-5")
    want = getattr(profile, "threads", None) or profile.cpu_cores
    m = edgecpm.load(artifact.path, device="raspberry-pi-5")
    assert m.backend.llm.context_params.n_threads == want
    assert m.backend.llm.context_params.n_threads_batch == want
