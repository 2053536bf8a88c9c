"""The on-phone bundle of an ExecuTorch artifact: exactly the files the Android demo app pushes and opens.

ExecuTorch's Android `LlmModule(modulePath, tokenizerPath, temperature)` needs a `.pte` and the tokenizer file
its C++ runner loads; the app also reads `edgecpm.json` (prompt template, stop tokens, limits). The bundle
folder holds those three files plus `push.sh` (the `adb push` to the app's model folder); it is staged and
installed like an export (`exporters.shell.StagedOutput`: only an earlier bundle is replaced, atomically).
Before anything is written the program is loaded by the ExecuTorch runtime with only the kernel libraries the
stock Android library links (XNNPACK, `llama::*` cache/SDPA ops, `quantized_decomposed::*`), so a program the
phone cannot run is refused here rather than on the device.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from edgecpm.errors import EdgecpmError
from edgecpm.exporters.manifest import read_manifest, write_json_atomic
from edgecpm.exporters.shell import StagedOutput

DEVICE_DIR = "/data/local/tmp/edgecpm"
RUNNER_TOKENIZERS = ("tokenizer.json", "tokenizer.model", "tokenizer.bin")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_loads(pte: Path) -> None:
    """Load `forward` with the stock kernel set; missing operators mean the phone cannot run it either."""
    from executorch.runtime import Runtime

    from edgecpm.backends.executorch_ops import import_runtime_ops

    import_runtime_ops()
    try:
        Runtime.get().load_program(pte).load_method("forward")
    except (RuntimeError, ValueError) as exc:
        raise EdgecpmError(
            f"{pte} does not load with ExecuTorch's stock kernels ({exc}); the Android library could not run it"
        ) from None


def package_android(artifact: str | Path, out: str | Path, verify: bool = True) -> dict[str, Any]:
    """Write the bundle for `artifact` into `out` (replaced only when complete); return its manifest dict
    (the app's section is `extra["android"]`)."""
    src, dst = Path(artifact), Path(out)
    manifest = read_manifest(src)
    if manifest.format != "executorch":
        raise EdgecpmError(
            f"{src} is a {manifest.format} artifact; the Android app runs ExecuTorch artifacts "
            "(export with --format executorch)"
        )
    if manifest.extra.get("sparse_kernel") == "compiled":
        raise EdgecpmError(
            f"{src} was exported with sparse_kernel=compiled: its program calls edgecpm's InfLLM v2 kernel "
            "library, which the app's ExecuTorch runtime does not have; export it again without that option"
        )
    pte = src / manifest.model_files[0]
    if not pte.is_file():
        raise EdgecpmError(f"ExecuTorch program {pte} is missing")
    tok_name = next((t for t in manifest.tokenizer_files if t in RUNNER_TOKENIZERS), None)
    if tok_name is None or not (src / tok_name).is_file():
        raise EdgecpmError(f"{src} has no tokenizer file ExecuTorch's runner loads ({', '.join(RUNNER_TOKENIZERS)})")
    staged = StagedOutput(
        dst,
        "executorch",
        accepts=lambda m: m.format == "executorch" and "android" in m.extra,
        what="earlier Android bundle",
    )
    if verify:
        verify_loads(pte)

    from executorch.version import __version__ as et_version

    config = manifest.model_config
    with staged as tmp:
        files = {"model": "model.pte", "tokenizer": tok_name}
        shutil.copyfile(pte, tmp / "model.pte")
        shutil.copyfile(src / tok_name, tmp / tok_name)
        tokenizer = _tokenizer_info(src, config)
        android = {
            "device_dir": DEVICE_DIR,
            "files": {
                role: {"name": name, "bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                for role, name in files.items()
            },
            "executorch_version": et_version,  # the AAR must match: .pte files are not forward compatible
            "max_seq_len": manifest.extra.get("max_seq_len"),
            "max_context_len": manifest.extra.get("max_context_len"),
            "bos_id": config.bos_token_id,
            "eos_ids": list(config.eos_token_ids),
            **tokenizer,
            **_app_info(src, config, manifest.extra.get("max_context_len") or config.max_position_embeddings),
        }
        data = {**_manifest_dict(manifest), "model_files": ["model.pte"], "tokenizer_files": [tok_name]}
        data["extra"] = {**data["extra"], "android": android}  # the bundle stays a loadable artifact
        write_json_atomic(tmp / "edgecpm.json", data)
        names = " ".join(["model.pte", tok_name, "edgecpm.json"])
        (tmp / "push.sh").write_text(
            "#!/bin/sh\n# Push this bundle to the folder the edgecpm Android app reads.\nset -e\n"
            f'cd "$(dirname "$0")"\nadb shell mkdir -p {DEVICE_DIR}\n'
            f'for f in {names}; do adb push "$f" {DEVICE_DIR}/; done\n',
            encoding="utf-8",
        )
        os.chmod(tmp / "push.sh", 0o755)
        staged.install(None)
    return data


BUNDLE_SCHEMA = "edgecpm.android-bundle/1"  # android_demo/core BundleManifest.SCHEMA reads exactly this
KV_CACHE_BYTES_PER_ELEMENT = 4  # the exported KV cache buffers are fp32 for every quant


def _app_info(src: Path, config: Any, max_context_len: int) -> dict[str, Any]:
    """Prompt format, benchmark prompts and phone memory budgets: what the app cannot compute itself."""
    from edgecpm.device_profiles.profile import list_profiles
    from edgecpm.exporters.android_prompt import benchmark_prompts, prompt_format
    from edgecpm.tokenizer import load_tokenizer_dir

    tok = load_tokenizer_dir(src, bos_id=config.bos_token_id, eos_ids=config.eos_token_ids)
    fmt, why = prompt_format(lambda msgs, gen: tok.apply_chat_template(msgs, add_generation_prompt=gen))
    phones = {
        p.name: {
            "display_name": p.display_name,
            "memory_budget_bytes": int(p.memory_budget_bytes),
            "threads": p.threads,
        }
        for p in list_profiles()
        if p.kind == "phone" and "executorch" in p.backends and not p.name.startswith("apple-")
    }
    return {
        "schema": BUNDLE_SCHEMA,
        "prompt_format": fmt,
        "prompt_format_error": why or None,
        "kv_bytes_per_token": int(config.kv_bytes_per_token(KV_CACHE_BYTES_PER_ELEMENT)),
        "benchmark": benchmark_prompts(tok, int(max_context_len)),
        "device_profiles": phones,
    }


def _manifest_dict(manifest: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(manifest)


def _tokenizer_info(src: Path, config: Any) -> dict[str, Any]:
    """Chat template and special-token ids the app needs to build prompts and stop."""
    from edgecpm.tokenizer import load_tokenizer_dir

    tok = load_tokenizer_dir(src, bos_id=config.bos_token_id, eos_ids=config.eos_token_ids)
    return {
        "chat_template": tok.chat_template,
        "add_bos": tok.add_bos,
        "special_tokens": dict(sorted(tok.special_tokens.items(), key=lambda kv: kv[1])),
    }
