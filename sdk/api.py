"""The embedded Python API: `edgecpm.load(path)` -> `LoadedModel`.

`path` is a Hugging Face checkpoint directory, a `.gguf` file, an exported artifact directory (with
`edgecpm.json`), or None / "smollm2" for the built-in default model. The backend is picked from the path
(and the artifact's format) unless named.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecpm.backends.base import Backend
from edgecpm.backends.registry import open_backend
from edgecpm.config import ModelConfig, is_preset
from edgecpm.default_model import resolve_model_path
from edgecpm.errors import EdgecpmError
from edgecpm.generation import GenerationResult, Generator, SamplingParams
from edgecpm.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    """A model ready to run: config, tokenizer and a backend holding the decoding state."""

    path: Path
    config: ModelConfig
    tokenizer: Tokenizer
    backend: Backend
    fmt: str  # "hf", "gguf" or an artifact format

    def encode_prompt(self, prompt_or_messages: str | Sequence[dict[str, str]]) -> list[int]:
        """Text is encoded as is; a message list goes through the chat template first."""
        tok = self.tokenizer
        if isinstance(prompt_or_messages, str):
            return tok.encode(prompt_or_messages)
        text = tok.apply_chat_template(list(prompt_or_messages), add_generation_prompt=True)
        bos_text = tok.id_to_text(tok.bos_id) if tok.bos_id is not None else None
        return tok.encode(text, add_bos=tok.add_bos and not (bos_text and text.startswith(bos_text)))

    def generate(
        self,
        prompt_or_messages: str | Sequence[dict[str, str]],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        stream: bool = False,
        draft: Any = None,
        draft_tokens: int | None = None,
        draft_tree: int | None = None,
    ) -> str | Iterator[str]:
        """Generated text, or an iterator of text pieces with `stream=True`.

        `draft` turns on speculative decoding (same output): "prompt-lookup", a draft model path, a
        `LoadedModel`, a `Draft`, or "eagle" / "eagle+fr" (the EAGLE head beside a torch target, with FR-Spec);
        `draft_tokens` is k, the tokens drafted per target forward; `draft_tree` > 1 drafts a token tree with up
        to that many candidates per step, verified in one forward (torch targets; docs/speculative.md).
        """
        ids, params, stops = self._prepare(prompt_or_messages, temperature, top_p, top_k, seed, stop)
        generator = self._generator(draft, draft_tokens, draft_tree)
        if stream:
            return generator.stream(ids, max_new_tokens, params, stops)
        return generator.run(ids, max_new_tokens, params, stops).text

    def generate_result(
        self,
        prompt_or_messages: str | Sequence[dict[str, str]],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        draft: Any = None,
        draft_tokens: int | None = None,
        draft_tree: int | None = None,
    ) -> GenerationResult:
        """Like `generate` but with token ids, finish reason and timings (and `extra["speculative"]` stats)."""
        ids, params, stops = self._prepare(prompt_or_messages, temperature, top_p, top_k, seed, stop)
        return self._generator(draft, draft_tokens, draft_tree).run(ids, max_new_tokens, params, stops)

    def _generator(self, draft: Any, draft_tokens: int | None, draft_tree: int | None = None) -> Generator:
        speculator = None
        if draft is not None:
            from edgecpm.speculative import speculator_for

            speculator = speculator_for(draft, self, draft_tokens)
            if speculator is not None and draft_tree is not None:
                speculator = speculator.with_tree(draft_tree)
        return Generator(self.backend, self.tokenizer, self.config.eos_token_ids, speculator=speculator)

    def open_sibling(self, path: str | Path, threads: int | None = None) -> LoadedModel:
        """Another model opened as `edgecpm.load` opens one (a speculative draft model, say)."""
        return load(path, threads=threads)

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Full-sequence logits `[len(token_ids), vocab]` float32 (for parity checks)."""
        ids = [int(i) for i in token_ids]
        if not ids:
            raise EdgecpmError("logits() needs at least one token id")
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise EdgecpmError(f"token id {bad[0]} is outside the vocabulary (size {self.config.vocab_size})")
        return np.asarray(self.backend.prefill(ids, all_logits=True), dtype=np.float32)

    def _prepare(
        self,
        prompt: Any,
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int | None,
        stop: Sequence[str] | str | None,
    ) -> tuple[list[int], SamplingParams, list[str]]:
        ids = self.encode_prompt(prompt)
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return ids, params, stops


def load(
    path: str | Path | None = None,
    backend: str = "auto",
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    ode_steps: int | None = None,
    **options: Any,
) -> LoadedModel:
    """Open a checkpoint, GGUF file or artifact and return a `LoadedModel`.

    `device` names a device profile (e.g. "host"); it supplies the thread count unless `threads` is given.
    `ode_steps` runs a shared-layer model with N ODE steps instead of its trained depth (torch backend; an
    exported ONNX / ExecuTorch / llama.cpp artifact has its step count fixed at export).
    """
    if path is not None and is_preset(str(path)) and not Path(str(path)).exists():
        raise EdgecpmError(f"{path!r} is a shape preset without weights: use it with `plan`, not `load`")
    p = resolve_model_path(path)
    if not p.exists():
        raise EdgecpmError(f"model path not found: {p}")
    if threads is None and device is not None:
        threads = _threads_from_profile(device)

    from edgecpm.exporters.formats import runtime_refusal
    from edgecpm.exporters.manifest import FORMAT_BACKENDS, is_artifact, read_manifest

    if p.is_dir() and is_artifact(p):
        manifest = read_manifest(p)
        name = FORMAT_BACKENDS[manifest.format] if backend == "auto" else backend
        if backend == "auto" and runtime_refusal(manifest.model_config, manifest.format) is not None:
            name = "torch"  # e.g. a SALA GGUF: stored for edgecpm's torch backend, llama.cpp cannot run it
        if name == "torch":
            if manifest.format != "gguf":
                raise EdgecpmError(
                    f"the torch backend cannot run a {manifest.format} artifact; load its source checkpoint instead"
                )
            # a GGUF artifact's weights are readable: run them on the reference model (e.g. with sparse attention)
            return load(
                p / manifest.model_files[0],
                backend="torch",
                dtype=dtype,
                threads=threads,
                progress=progress,
                ode_steps=ode_steps,
                **options,
            )
        _check_fixed_steps(manifest.model_config, ode_steps, manifest.format)
        _check_runs(name, manifest.model_config, p / manifest.model_files[0])
        opened = open_backend(
            name, p, manifest.model_config, manifest, dtype=dtype, threads=threads, progress=progress, **options
        )
        backend_obj, tokenizer = opened.backend, opened.tokenizer
        if tokenizer is None:
            tokenizer = _artifact_tokenizer(p, manifest.model_config)
        return LoadedModel(p, manifest.model_config, tokenizer, backend_obj, manifest.format)

    from edgecpm.weights import open_checkpoint

    config, source = open_checkpoint(p)
    if p.suffix == ".gguf" and backend == "llama.cpp":
        _check_fixed_steps(config, ode_steps, "llama.cpp")
    else:
        config = config.with_ode_steps(ode_steps)
    if p.suffix == ".gguf":
        from edgecpm.gguf_vocab import tokenizer_from_gguf

        tokenizer = tokenizer_from_gguf(source.reader, config.eos_token_ids)
        fmt = "gguf"
    else:
        from edgecpm.tokenizer import load_tokenizer_dir

        tokenizer = load_tokenizer_dir(p, bos_id=config.bos_token_id, eos_ids=config.eos_token_ids)
        fmt = "hf"
    name = "torch" if backend == "auto" else backend
    if name == "llama.cpp" and fmt != "gguf":
        raise EdgecpmError("the llama.cpp backend runs .gguf files; export the checkpoint with --format gguf first")
    _check_runs(name, config, p)
    backend_obj = open_backend(
        name, p, config, None, source=source, dtype=dtype, threads=threads, progress=progress, **options
    ).backend
    return LoadedModel(p, config, tokenizer, backend_obj, fmt)


def _check_runs(backend: str, config: ModelConfig, model_file: Path) -> None:
    """A format's own runtime that cannot run the model (llama.cpp and a SALA GGUF) is one line, not a crash."""
    from edgecpm.exporters.formats import BACKEND_FORMAT, runtime_refusal

    fmt = BACKEND_FORMAT.get(backend)
    reason = None if fmt is None else runtime_refusal(config, fmt)
    if reason is not None:
        raise EdgecpmError(f"the {backend} backend cannot run {model_file.name}: {reason}")


def _check_fixed_steps(config: ModelConfig, ode_steps: int | None, fmt: str) -> None:
    """Exported graphs have their depth built in: only the step count they were exported with can run."""
    if ode_steps is not None and ode_steps != config.num_layers:
        raise EdgecpmError(
            f"this {fmt} model runs {config.num_layers} layer steps (fixed at export); export it "
            f"with --option ode_steps={ode_steps}, or load the source checkpoint with ode_steps"
        )


def _artifact_tokenizer(directory: Path, config: ModelConfig) -> Tokenizer:
    from edgecpm.tokenizer import load_tokenizer_dir

    return load_tokenizer_dir(directory, bos_id=config.bos_token_id, eos_ids=config.eos_token_ids)


def _threads_from_profile(device: str) -> int | None:
    try:
        from edgecpm.device_profiles import load_profile
    except ImportError:
        raise EdgecpmError(f"device profiles are not available; cannot use device {device!r}") from None
    profile = load_profile(device)
    return getattr(profile, "threads", None) or getattr(profile, "cpu_cores", None)
