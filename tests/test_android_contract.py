"""The Android app's `:core` (Java, run on this JVM) and the Python SDK agree on the bundle.

* A bundle written by `edgecpm package android` from a tiny checkpoint is accepted by `:core`
  (`ContractMain`), which reports the same files, limits and stop tokens as the manifest, and renders the same
  prompts for the same messages as the checkpoint's Jinja chat template (rendered by jinja2, not by the
  app's rule).
* `:core`'s settings per phone profile equal the memory rule computed here from the model config.
* A bundle whose format changed on the Python side only (schema, a renamed field, a truncated file) is refused.
* The same `.pte`, run on this host by ExecuTorch's C++ LLM runner (the engine inside the phone's
  `LlmModule`) with the settings `:core` chose for the benchmark, produces the greedy tokens of a step-by-step
  `executorch.runtime` decode and of the torch reference model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch.runtime")

ROOT = Path(__file__).resolve().parents[1]
CORE_SRC = ROOT / "android_demo" / "core" / "src" / "main" / "java"
JSON_JAR = Path("/usr/share/java/com.android.json.jar")
MAX_SEQ, CTX = 16, 64
EXTRA_CONVERSATIONS = [
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Ünïcödé \u2014 ok?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Why?\n\nExplain."},
    ],
]


@pytest.fixture(scope="module")
def core_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("no JDK (javac); android_demo/ci_check.sh installs default-jdk-headless")
    if not JSON_JAR.is_file():
        pytest.skip("no org.json jar; android_demo/ci_check.sh installs libandroid-json-java")
    out = tmp_path_factory.mktemp("core-classes")
    sources = [str(p) for p in CORE_SRC.rglob("*.java")]
    subprocess.run(
        [
            "javac",
            "--release",
            "8",
            "-Xlint:-options",
            "-encoding",
            "UTF-8",
            "-cp",
            str(JSON_JAR),
            "-d",
            str(out),
            *sources,
        ],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

    return cached_checkpoint(SyntheticSpec(tied=False, seed=3))


@pytest.fixture(scope="module")
def bundle(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgecpm.exporters.executorch_android import package_android
    from edgecpm.exporters.registry import run_export

    tmp = tmp_path_factory.mktemp("android")
    run_export(
        checkpoint, "executorch", tmp / "art", quant="fp32", max_seq_len=MAX_SEQ, max_context_len=CTX, progress=False
    )
    package_android(tmp / "art", tmp / "bundle")
    return tmp / "bundle"


def run_core(classes: Path, bundle: Path, conversations: list, tmp: Path) -> subprocess.CompletedProcess:
    conv = tmp / "conversations.json"
    conv.write_text(json.dumps(conversations), encoding="utf-8")
    return subprocess.run(
        ["java", "-cp", f"{classes}:{JSON_JAR}", "org.edgecpm.demo.core.ContractMain", str(bundle), str(conv)],
        capture_output=True,
        text=True,
        encoding="utf-8",
    )


def conversations() -> list:
    from edgecpm.exporters.android_prompt import CHECK_CONVERSATIONS

    return [list(c) for c in CHECK_CONVERSATIONS] + EXTRA_CONVERSATIONS


@pytest.fixture(scope="module")
def core_view(core_classes: Path, bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    proc = run_core(core_classes, bundle, conversations(), tmp_path_factory.mktemp("conv"))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_core_reads_the_manifest_python_wrote(core_view: dict, bundle: Path, checkpoint: Path) -> None:
    from edgecpm.exporters.executorch_android import BUNDLE_SCHEMA, DEVICE_DIR

    data = json.loads((bundle / "edgecpm.json").read_text(encoding="utf-8"))
    android = data["extra"]["android"]
    assert core_view["schema"] == BUNDLE_SCHEMA == android["schema"]
    java_dir = (CORE_SRC / "org/edgecpm/demo/core/BundleManifest.java").read_text()
    assert f'DEVICE_DIR = "{DEVICE_DIR}"' in java_dir  # where push.sh pushes is where the app looks
    assert core_view["model_file"] == "model.pte" and (bundle / core_view["model_file"]).is_file()
    assert core_view["tokenizer_file"] == "tokenizer.model"
    assert core_view["model_bytes"] == (bundle / "model.pte").stat().st_size
    assert (core_view["max_seq_len"], core_view["max_context_len"]) == (MAX_SEQ, CTX)
    import edgecpm

    config = edgecpm.load(checkpoint).config
    assert core_view["eos_ids"] == list(config.eos_token_ids)
    assert core_view["bos_id"] == config.bos_token_id
    specials = {i: t for t, i in android["special_tokens"].items()}
    assert core_view["stop_texts"] == [specials[i] for i in config.eos_token_ids if i in specials]


def test_core_renders_the_same_prompts_as_the_jinja_template(core_view: dict, checkpoint: Path) -> None:
    import edgecpm

    tok = edgecpm.load(checkpoint).tokenizer
    assert tok.chat_template  # the checkpoint's own template, rendered by jinja2
    for conv, (with_gen, without_gen, _) in zip(conversations(), core_view["renders"]):
        assert with_gen == tok.apply_chat_template(conv, add_generation_prompt=True)
        assert without_gen == tok.apply_chat_template(conv, add_generation_prompt=False)


def test_core_settings_follow_the_memory_rule(core_view: dict, bundle: Path, checkpoint: Path) -> None:
    import edgecpm
    from edgecpm.device_profiles.catalog import load_profile

    config = edgecpm.load(checkpoint).config
    kv_per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * 4  # fp32 K and V
    model_bytes = (bundle / "model.pte").stat().st_size
    assert core_view["settings"], "the bundle ships no phone profiles"
    for name, s in core_view["settings"].items():
        budget = load_profile(name).memory_budget_bytes
        want = min(CTX, (int(budget) - model_bytes - (64 << 20)) // kv_per_token)
        assert s["context_tokens"] == want
        assert s["num_bos"] == 1 and s["benchmark_temperature"] == 0.0
        assert s["threads"] == load_profile(name).threads


@pytest.mark.parametrize("change", ["schema", "renamed_field", "truncated_model", "not_executorch"])
def test_core_refuses_a_bundle_changed_on_one_side(
    change: str, core_classes: Path, bundle: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    data = json.loads((copy / "edgecpm.json").read_text(encoding="utf-8"))
    android = data["extra"]["android"]
    if change == "schema":
        android["schema"] = "edgecpm.android-bundle/2"
    elif change == "renamed_field":
        android["max_context_length"] = android.pop("max_context_len")
    elif change == "truncated_model":
        (copy / "model.pte").write_bytes((copy / "model.pte").read_bytes()[:-10])
    else:
        data["format"] = "onnx"
    (copy / "edgecpm.json").write_text(json.dumps(data), encoding="utf-8")
    proc = run_core(core_classes, copy, conversations(), tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("core: error: ") and proc.stderr.count("\n") == 1


def _greedy_executorch(pte: Path, ids: list[int], new_tokens: int, eos: set[int]) -> list[int]:
    """Step-by-step greedy decode through `executorch.runtime`: prefill in chunks of max_seq_len."""
    import torch
    from executorch.runtime import Runtime

    from edgecpm.backends.executorch_ops import import_runtime_ops

    import_runtime_ops()
    forward = Runtime.get().load_program(pte).load_method("forward")
    logits = None
    for start in range(0, len(ids), MAX_SEQ):
        chunk = ids[start : start + MAX_SEQ]
        logits = forward.execute([torch.tensor([chunk]), torch.tensor([start])])[0]
    out: list[int] = []
    pos = len(ids)
    while len(out) < new_tokens:
        token = int(np.argmax(logits.reshape(-1, logits.shape[-1])[-1].numpy()))
        out.append(token)
        if token in eos:
            break
        logits = forward.execute([torch.tensor([[token]]), torch.tensor([pos])])[0]
        pos += 1
    return out


def test_host_runner_gives_the_tokens_the_app_settings_imply(core_view: dict, bundle: Path, checkpoint: Path) -> None:
    import sentencepiece as spm
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    import edgecpm
    from edgecpm.backends.executorch_ops import import_runtime_ops

    profile, settings = next(iter(core_view["settings"].items()))
    prompt = core_view["benchmark_prompts"][0]
    num_bos = settings["num_bos"]
    # what the app's Benchmark passes to LlmModule.generate as seqLen (android_demo/core Benchmark.run)
    new_tokens = core_view["benchmark_decode_tokens"]
    sp = spm.SentencePieceProcessor(model_file=str(bundle / "tokenizer.model"))
    ids = [core_view["bos_id"]] * num_bos + sp.encode(prompt["text"])
    reference = edgecpm.load(checkpoint, backend="torch")
    assert reference.tokenizer.encode(prompt["text"]) == ids
    assert len(ids) + new_tokens < settings["context_tokens"]
    eos = set(core_view["eos_ids"])
    stepwise = _greedy_executorch(bundle / "model.pte", ids, new_tokens, eos)
    want = reference.generate_result(prompt["text"], max_new_tokens=new_tokens).token_ids
    assert stepwise == list(want)

    import_runtime_ops()
    runner = TextLLMRunner(str(bundle / "model.pte"), str(bundle / "tokenizer.model"))
    pieces: list[str] = []
    stats: list = []
    runner.generate(
        prompt["text"],
        GenerationConfig(
            seq_len=new_tokens, temperature=settings["benchmark_temperature"], num_bos=num_bos, echo=False
        ),
        token_callback=pieces.append,
        stats_callback=stats.append,
    )
    assert stats and stats[0].num_prompt_tokens == len(ids), profile
    assert len(pieces) == len(stepwise) == new_tokens
    # the runner's SentencePiece decoder emits each token's piece (U+2581 as a space)
    assert "".join(pieces).strip() == "".join(sp.id_to_piece(i).replace("\u2581", " ") for i in stepwise).strip()


def test_chat_reply_budget_keeps_the_runner_inside_the_context(core_view: dict, bundle: Path) -> None:
    """The chat prompt `:core` renders plus the reply length it allows stay within the exported context."""
    import sentencepiece as spm
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    from edgecpm.backends.executorch_ops import import_runtime_ops

    import_runtime_ops()
    sp = spm.SentencePieceProcessor(model_file=str(bundle / "tokenizer.model"))
    runner = TextLLMRunner(str(bundle / "model.pte"), str(bundle / "tokenizer.model"))
    fitting = [(prompt, reply) for prompt, _, reply in core_view["renders"] if reply >= 1]
    assert fitting  # the tiny 64-token context leaves room after the shortest conversations only
    for prompt, reply in fitting:
        assert 1 + len(sp.encode(prompt)) + reply <= core_view["max_context_len"]
        pieces: list[str] = []
        runner.reset()
        runner.generate(
            prompt,
            GenerationConfig(seq_len=reply, temperature=0.0, num_bos=1, echo=False),
            token_callback=pieces.append,
        )
        assert 1 <= len(pieces) <= reply


def _runner_stats(prompt_tokens: int, generated: int, prefill_ms: int, decode_ms: int) -> str:
    """A stats line in the runner's format (extension/llm/runner/stats.h) with phone-like timings."""
    start = 1_700_000_000_000
    return json.dumps(
        {
            "prompt_tokens": prompt_tokens,
            "generated_tokens": generated,
            "model_load_start_ms": start - 900,
            "model_load_end_ms": start - 50,
            "inference_start_ms": start,
            "prompt_eval_end_ms": start + prefill_ms,
            "first_token_ms": start + prefill_ms,
            "inference_end_ms": start + prefill_ms + decode_ms,
            "aggregate_sampling_time_ms": 3,
            "SCALING_FACTOR_UNITS_PER_SECOND": 1000,
        }
    )


def test_phone_benchmark_merges_into_the_device_report(
    core_classes: Path, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's benchmark writer (`:core` Benchmark) -> `edgecpm profile --import` -> report + calibration."""
    import edgecpm
    from edgecpm.cli import main

    monkeypatch.setenv("EDGECPM_CALIBRATION_DIR", str(tmp_path / "calibration"))
    tools = tmp_path / "tools"
    subprocess.run(
        [
            "javac",
            "--release",
            "8",
            "-Xlint:-options",
            "-cp",
            f"{core_classes}:{JSON_JAR}",
            "-d",
            str(tools),
            str(CORE_SRC.parent.parent / "test/java/org/edgecpm/demo/core/BenchmarkMain.java"),
        ],
        check=True,
        capture_output=True,
    )
    android = json.loads((bundle / "edgecpm.json").read_text(encoding="utf-8"))["extra"]["android"]
    decode_tokens = android["benchmark"]["decode_tokens"]
    contexts = [p["context"] for p in android["benchmark"]["prompts"]]
    replay = [
        {
            "pieces": ["x"] * decode_tokens,
            "stats": _runner_stats(c + 1, decode_tokens, prefill_ms=4 * (c + 1), decode_ms=25 * (decode_tokens - 1)),
        }
        for c in contexts
    ]
    (tmp_path / "replay.json").write_text(json.dumps(replay))
    device = "snapdragon-8-gen3"
    phone_json = tmp_path / "benchmark.json"
    subprocess.run(
        [
            "java",
            "-cp",
            f"{tools}:{core_classes}:{JSON_JAR}",
            "org.edgecpm.demo.core.BenchmarkMain",
            str(bundle),
            str(tmp_path / "replay.json"),
            device,
            str(phone_json),
        ],
        check=True,
    )
    c = contexts[0] + 1

    def executorch_decode() -> float:
        plan = edgecpm.plan(bundle, device, context=c)
        return next(x.prediction.decode_tokens_per_s for x in plan.candidates if x.backend == "executorch")

    before = executorch_decode()
    out = tmp_path / "report"
    assert main(["profile", str(bundle), "--import", str(phone_json), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["host"]["profile"]["name"] == device
    entry = report["calibration"]["backends"]["executorch/fp32"]
    p = entry["predictions"][0]
    assert p["context"] == c
    assert p["measured_decode"] == pytest.approx(40.0)  # 1 token per 25 ms
    assert p["measured_prefill"] == pytest.approx(250.0)  # 4 ms per prompt token
    assert p["predicted_decode_default"] == pytest.approx(before)  # the planner's prediction beside it
    assert report["calibration"]["stored"]
    after = executorch_decode()  # the plan for that device now uses the phone's measurement
    assert after == pytest.approx(p["predicted_decode_calibrated"]) and after != pytest.approx(before)
    assert abs(after / 40.0 - 1) < abs(before / 40.0 - 1)
    assert "measured on replay host JVM" in (out / "report.md").read_text()
    # importing again replaces that entry; another device's numbers are refused for this report
    assert main(["profile", str(bundle), "--import", str(phone_json), "--out", str(out)]) == 0
    assert len(json.loads((out / "report.json").read_text())["backends"]) == 1
    assert main(["profile", str(bundle), "--import", str(phone_json), "--device", "tensor-g3", "--out", str(out)]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "edgecpm.phone-benchmark/1", "runs": []}))
    assert main(["profile", str(bundle), "--import", str(bad), "--out", str(tmp_path / "r2")]) == 2
    assert not (tmp_path / "r2").exists()
