"""`resolve_draft(spec, target)`: what `generate(draft=...)` and `--draft SRC` accept, turned into a `Draft`.

* "prompt-lookup" (also "ngram", "lookup"): n-gram copying from the context;
* "eagle": the EAGLE draft head stored beside the target (`edgecpm.speculative.eagle.head_path`);
  "eagle+fr" restricts its output head to the frequency table beside the target (FR-Spec), "eagle+fr:N" to
  the table's first N tokens; a head's `.json` path may stand for "eagle" (torch targets: it reads their
  hidden states);
* a path that `edgecpm.load` opens (a smaller model with the same tokenizer, or the target exported at lower
  precision) drafts as a model, on its own backend;
* "ode:N" (shared-layer models on torch): the target's own weights integrated in N ODE steps instead of its
  trained depth L (N < L: a cheaper, rougher draft, no second copy of the weights);
* a `Draft`, a `LoadedModel` or a `Backend` object is used as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecpm.backends.base import Backend
from edgecpm.errors import EdgecpmError
from edgecpm.speculative.drafts import Draft, EagleDraft, ModelDraft, PromptLookupDraft

LOOKUP_NAMES = ("prompt-lookup", "ngram", "lookup")
# k when none is given: copying is free to draft, so long proposals cost only verify width
DEFAULT_DRAFT_TOKENS = {"prompt-lookup": 8, "model": 4, "eagle": 4}


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
    if text.lower().startswith("ode:"):
        return ode_draft(target, text[4:], threads)
    base, fr, size = text.partition("+fr")
    if base.lower() == "eagle" or base.endswith(".json"):
        return eagle_draft(target, None if base.lower() == "eagle" else Path(base), bool(fr), size)
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


def ode_draft(target: Any, steps: str, threads: int | None = None) -> ModelDraft:
    """A shared-layer target's own weights run with fewer ODE steps, on a torch backend of its own."""
    from edgecpm.backends.torch_backend import TorchBackend

    model = getattr(target.backend, "model", None)
    if model is None or not hasattr(model, "restepped"):
        raise EdgecpmError(
            f"an ode:N draft re-steps the target's own weights; the {target.backend.name} backend does not "
            "expose them (load the target with backend='torch')"
        )
    if not steps.isdigit() or int(steps) < 1:
        raise EdgecpmError(f"draft 'ode:{steps}': expected ode:N with N a positive number of ODE steps")
    n, trained = int(steps), model.config.num_layers
    if n >= trained:
        raise EdgecpmError(f"draft 'ode:{n}': a draft must take fewer steps than the target's {trained}")
    try:
        draft = model.restepped(n)
    except EdgecpmError as exc:
        raise EdgecpmError(f"draft 'ode:{n}': {exc}") from None
    return ModelDraft(TorchBackend(draft, threads=threads), f"ode:{n} of {trained} steps (torch, shared weights)")


def eagle_draft(target: Any, head_json: Path | None = None, frspec: bool = False, size: str = "") -> EagleDraft:
    """The EAGLE head at `head_json` (default: beside the target) over a torch target's own weights."""
    from edgecpm.speculative.eagle import EagleHead, head_path
    from edgecpm.speculative.frspec import read_ids, table_path

    model = getattr(target.backend, "model", None)
    if model is None or not hasattr(model, "embed_tokens"):
        raise EdgecpmError(
            f"the EAGLE draft reads the target's hidden states and output head; the {target.backend.name} backend "
            "does not expose them (load the target with backend='torch')"
        )
    path = head_json or head_path(target.path)
    if not path.is_file():
        raise EdgecpmError(f"no EAGLE head at {path}: train one with examples/train_eagle_head.py")
    head, _ = EagleHead.load(path, target.config)
    head = head.to(model.dtype).attach(
        model.embed_tokens.weight,
        model.norm.weight,
        model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight,
    )
    rows = None
    if frspec:
        if size and not size[1:].isdigit():
            raise EdgecpmError(f"FR-Spec size {size[1:]!r}; expected eagle+fr or eagle+fr:N with N a token count")
        table = table_path(target.path)
        if not table.is_file():
            raise EdgecpmError(f"no frequency table at {table}: build one with `edgecpm freq-table`")
        rows = read_ids(table, int(target.config.vocab_size), int(size[1:]) if size else None)
    return EagleDraft(head, rows)


def speculator_for(spec: Any, target: Any, draft_tokens: int | None = None, threads: int | None = None) -> Any:
    """A `Speculator` for `generate(draft=..., draft_tokens=...)`, or None for plain decoding."""
    from edgecpm.speculative.generator import Speculator

    if isinstance(spec, Speculator):
        return spec
    draft = resolve_draft(spec, target, threads)
    if draft is None:
        return None
    if draft_tokens is None:
        kind = "prompt-lookup" if isinstance(draft, PromptLookupDraft) else "model"
        draft_tokens = DEFAULT_DRAFT_TOKENS["eagle" if isinstance(draft, EagleDraft) else kind]
    return Speculator(draft, draft_tokens)
