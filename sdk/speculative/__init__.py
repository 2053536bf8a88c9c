"""Speculative decoding over the `Backend` protocol: a draft proposes tokens, the target verifies them in one
forward, and the output is the target's own (greedy: token for token; sampling: the same distribution).

Drafts: prompt lookup (n-gram), any other model on any backend (a smaller model with the same tokenizer, or
the same model at lower precision), and an EAGLE-style head over the target's hidden states with an optional
FR-Spec vocabulary. See docs/speculative.md.
"""

from edgecpm.speculative.drafts import Draft, ModelDraft, PromptLookupDraft
from edgecpm.speculative.generator import Speculator

__all__ = ["Draft", "ModelDraft", "PromptLookupDraft", "Speculator"]
