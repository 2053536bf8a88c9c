"""Speculative decoding over the `Backend` protocol: a draft proposes tokens, the target verifies them in one
forward, and the output is the target's own (greedy: token for token; sampling: the same distribution).

Drafts: prompt lookup (n-gram), any other model on any backend (a smaller model with the same tokenizer, or
the same model at lower precision), and an EAGLE-style head over the target's hidden states, optionally with an
FR-Spec frequency-restricted output head. See docs/speculative.md.
"""

from edgecpm.speculative.drafts import Draft, EagleDraft, ModelDraft, PromptLookupDraft
from edgecpm.speculative.generator import SpeculativeStats, Speculator
from edgecpm.speculative.sources import resolve_draft, speculator_for

__all__ = [
    "Draft",
    "EagleDraft",
    "ModelDraft",
    "PromptLookupDraft",
    "SpeculativeStats",
    "Speculator",
    "resolve_draft",
    "speculator_for",
]
