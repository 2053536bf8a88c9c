"""`resolve_draft(spec, target)`: what `generate(draft=...)` and `--draft SRC` accept, turned into a `Draft`.

* "prompt-lookup" (also "ngram", "lookup"): n-gram copying from the context;
* a path that `edgecpm.load` opens (a smaller model with the same tokenizer, or the target exported at lower
  precision) drafts as a model, on its own backend;
* a `Draft`, a `LoadedModel` or a `Backend` object is used as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecpm.backends.base import Backend
from edgecpm.errors import EdgecpmError
from edgecpm.speculative.drafts import Draft, ModelDraft, PromptLookupDraft

LOOKUP_NAMES = ("prompt-lookup", "ngram", "lookup")
# k when none is given: copying is free to draft, so long proposals cost only verify width
DEFAULT_DRAFT_TOKENS = {"prompt-lookup": 8, "model": 4}


def resolve_draft(spec: Any, target: Any, threads: int | None = None) -> Draft | None:
    """`target` is the `LoadedModel` that verifies; None / "none" means plain decoding."""
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if isinstance(spec, Draft):
        return spec
    if isinstance(spec, Backend):
        return _model_draft(spec, target, getattr(spec, "name", "model"))
    if hasattr(spec, "backend") and hasattr(spec, "tokenizer"):  # a LoadedModel
        return _model_draft(spec.backend, target, f"{spec.path.name} ({spec.backend.name})")
    text = str(spec)
    if text.lower() in LOOKUP_NAMES:
        return PromptLookupDraft()
    path = Path(text)
    if not path.exists():
        raise EdgecpmError(f"draft {text!r} is neither a draft name (prompt-lookup, none) nor a path")
    model = target.open_sibling(path, threads=threads)
    return _model_draft(model.backend, target, f"{path.name} ({model.backend.name})")


def _model_draft(backend: Any, target: Any, name: str) -> ModelDraft:
    if backend is target.backend:
        raise EdgecpmError("the draft must hold its own decoding state: load the draft model separately")
    if int(backend.vocab_size) != int(target.config.vocab_size):
        raise EdgecpmError(
            f"draft vocabulary has {backend.vocab_size} tokens but the target's has "
            f"{target.config.vocab_size}: a draft model must share the target's tokenizer"
        )
    return ModelDraft(backend, name)


def speculator_for(spec: Any, target: Any, draft_tokens: int | None = None, threads: int | None = None) -> Any:
    """A `Speculator` for `generate(draft=..., draft_tokens=...)`, or None for plain decoding."""
    from edgecpm.speculative.generator import Speculator

    if isinstance(spec, Speculator):
        return spec
    draft = resolve_draft(spec, target, threads)
    if draft is None:
        return None
    if draft_tokens is None:
        draft_tokens = DEFAULT_DRAFT_TOKENS["prompt-lookup" if isinstance(draft, PromptLookupDraft) else "model"]
    return Speculator(draft, draft_tokens)
