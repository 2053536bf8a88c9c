"""ExecuTorch export, checked by ExecuTorch's own runtimes against the reference model.

* fp32 `.pte` through `executorch.runtime` (the `executorch` backend) vs the torch reference `Model`: a prefill
  and 16 decode steps within 1e-3 max abs, per-position logits, truncate/rollback, prompts longer than the
  exported prefill length.
* ExecuTorch's C++ LLM runner (`TextLLMRunner`, the engine of the Android app) loads the artifact and generates
  the same greedy text as the reference.
* The metadata constant methods, executed by the runtime; the exported length bound really accepted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.runtime")

import edgecpm  # noqa: E402
from edgecpm.exporters.registry import run_export  # noqa: E402
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint  # noqa: E402

MAX_SEQ, CTX = 16, 64
SPEC = SyntheticSpec(tied=False, seed=3)
TEXT = (Path(__file__).parent / "data" / "wikitext2_test_excerpt.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return cached_checkpoint(SPEC)


@pytest.fixture(scope="module")
def artifact(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("et") / "tiny-fp32"
    run_export(checkpoint, "executorch", out, quant="fp32", max_seq_len=MAX_SEQ, max_context_len=CTX, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> edgecpm.LoadedModel:
    return edgecpm.load(checkpoint, backend="torch")


def _prompt_ids(ref: edgecpm.LoadedModel, n: int) -> list[int]:
    ids = ref.tokenizer.encode(TEXT[:2000])
    assert len(ids) >= n
    return ids[:n]


def test_artifact_layout(artifact: Path) -> None:
    from edgecpm.exporters.manifest import read_manifest

    manifest = read_manifest(artifact)
    assert manifest.format == "executorch" and manifest.quant == "fp32"
    assert (artifact / "model.pte").stat().st_size == manifest.extra["pte_bytes"]
    assert (artifact / "tokenizer.model").is_file()
    assert manifest.tokenizer_files[0] == "tokenizer.model"
    assert not list(artifact.parent.glob(".*tmp*")), "temporary export folder left behind"


def test_prefill_and_16_decode_steps_match_reference(artifact: Path, reference: edgecpm.LoadedModel) -> None:
    et = edgecpm.load(artifact)
    assert et.backend.name == "executorch"
    prompt = _prompt_ids(reference, 9)
    ref_last = reference.backend.prefill(prompt)
    et_last = et.backend.prefill(prompt)
    assert np.abs(et_last - ref_last).max() < 1e-3
    # greedy continuation chosen by the reference; both must agree at every step
    token = int(ref_last.argmax())
    worst = 0.0
    for _ in range(16):
        r = reference.backend.decode([token])[0]
        e = et.backend.decode([token])[0]
        worst = max(worst, float(np.abs(e - r).max()))
        token = int(r.argmax())
    assert worst < 1e-3, worst
    assert et.backend.n_past == 9 + 16
    assert float(np.abs(ref_last).max()) > 1.0  # the comparison is not between near-zero logits


def test_long_prompt_all_logits_and_truncate(artifact: Path, reference: edgecpm.LoadedModel) -> None:
    et = edgecpm.load(artifact)
    ids = _prompt_ids(reference, 40)  # > max_seq_len: the backend splits the prefill into chunks
    ref_all = reference.logits(ids)
    assert np.abs(et.logits(ids) - ref_all).max() < 1e-3
    last = et.backend.prefill(ids)
    assert np.abs(last - ref_all[-1]).max() < 1e-3
    # roll back 8 tokens and continue with different ones: stale cache entries must not be attended
    et.backend.truncate(32)
    other = _prompt_ids(reference, 60)[50:58]
    got = et.backend.decode(other)
    want = reference.logits(ids[:32] + other)[32:]
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-3


def test_context_limit_and_bad_tokens(artifact: Path) -> None:
    et = edgecpm.load(artifact)
    with pytest.raises(edgecpm.EdgecpmError, match="context"):
        et.backend.prefill([5] * (CTX + 1))
    with pytest.raises(edgecpm.EdgecpmError, match="vocabulary"):
        et.backend.prefill([10**6])
    with pytest.raises(edgecpm.EdgecpmError, match="truncate"):
        et.backend.truncate(5)


def test_metadata_methods_and_length_bound(artifact: Path, checkpoint: Path) -> None:
    from executorch.runtime import Runtime

    from edgecpm.backends.executorch_ops import import_runtime_ops

    import_runtime_ops()
    program = Runtime.get().load_program(artifact / "model.pte")
    config = edgecpm.load(checkpoint).config

    def const(name: str) -> list:
        return list(program.load_method(name).execute([]))

    assert const("get_max_seq_len") == [MAX_SEQ]
    assert const("get_max_context_len") == [CTX]
    assert const("get_bos_id") == [config.bos_token_id]
    assert const("get_eos_ids") == list(config.eos_token_ids)
    assert const("use_kv_cache") == [True] and const("enable_dynamic_shape") == [True]
    assert const("get_vocab_size") == [config.vocab_size]
    forward = program.load_method("forward")
    out = forward.execute([torch.ones(1, MAX_SEQ, dtype=torch.long), torch.tensor([0])])[0]
    assert out.shape == (1, config.vocab_size)  # the advertised max_seq_len is accepted
    with pytest.raises(RuntimeError):
        forward.execute([torch.ones(1, MAX_SEQ + 1, dtype=torch.long), torch.tensor([0])])


def test_executorch_llm_runner_generates(artifact: Path, reference: edgecpm.LoadedModel) -> None:
    """The C++ runner the Android app uses: loads model + tokenizer, prefills in chunks, decodes greedily."""
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    from edgecpm.backends.executorch_ops import import_runtime_ops

    import_runtime_ops()
    # one plain line (no "<unk>" markers, no newlines): > max_seq_len tokens, so the runner chunks the prefill
    start = TEXT.index("He had a guest")
    prompt = TEXT[start : start + 70]
    runner = TextLLMRunner(str(artifact / "model.pte"), str(artifact / "tokenizer.model"))
    pieces: list[str] = []
    stats: list = []
    runner.generate(
        prompt,
        GenerationConfig(max_new_tokens=12, temperature=0.0, echo=False, num_bos=1),
        token_callback=pieces.append,
        stats_callback=stats.append,
    )
    prompt_ids = reference.tokenizer.encode(prompt)
    assert MAX_SEQ < len(prompt_ids) < CTX - 12
    assert stats and stats[0].num_prompt_tokens == len(prompt_ids)
    assert len(pieces) == 12
    # the runner's SentencePiece decoder emits each token's piece (U+2581 as space, byte tokens as <0xNN>)
    want = reference.generate_result(prompt, max_new_tokens=12).token_ids
    assert len(want) == 12
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(artifact / "tokenizer.model"))
    want_text = "".join(sp.id_to_piece(i).replace("\u2581", " ") for i in want)
    assert "".join(pieces).strip() == want_text.strip()


def test_runner_tokenizer_knows_minicpm_special_tokens(artifact: Path, reference: edgecpm.LoadedModel) -> None:
    """`<|im_end|>` (the chat stop token) must be inside the runner's vocabulary, with the model's id."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(artifact / "tokenizer.model"))
    assert sp.get_piece_size() == reference.config.vocab_size
    for text, tid in reference.tokenizer.special_tokens.items():
        assert sp.id_to_piece(tid) == text


def test_cli_export_and_package_android(artifact: Path, checkpoint: Path, tmp_path: Path) -> None:
    """`edgecpm package android`: the app's files, checksummed, loadable by the stock kernels; atomic."""
    import hashlib
    import json

    from edgecpm.cli import main

    out = tmp_path / "bundle"
    assert main(["package", "android", str(artifact), "--out", str(out), "--json"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["edgecpm.json", "model.pte", "push.sh", "tokenizer.model"]
    data = json.loads((out / "edgecpm.json").read_text())
    android = data["extra"]["android"]
    files = android["files"]
    assert files["model"]["sha256"] == hashlib.sha256((artifact / "model.pte").read_bytes()).hexdigest()
    assert files["tokenizer"]["name"] == "tokenizer.model"
    assert android["eos_ids"] == list(edgecpm.load(checkpoint).config.eos_token_ids)
    assert android["special_tokens"]["<|im_end|>"] == android["eos_ids"][1]
    assert "adb push" in (out / "push.sh").read_text()
    # the bundle is itself a loadable executorch artifact
    assert edgecpm.load(out).backend.name == "executorch"
    # a non-executorch artifact or a foreign folder is refused, nothing written
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    assert main(["package", "android", str(artifact), "--out", str(tmp_path / "foreign")]) == 2
    assert main(["package", "android", str(checkpoint), "--out", str(tmp_path / "b2")]) == 2
    assert not (tmp_path / "b2").exists()
    assert not list(tmp_path.glob(".*tmp*"))
