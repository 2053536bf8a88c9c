"""What the Android app needs to build prompts and benchmark without a Jinja engine or a tokenizer of its own.

* `prompt_format`: a chat template reduced to per-role prefix/suffix strings, a start string chosen by the
  first message's role (templates that add a default system turn) and the generation prompt. The reduction is
  derived by rendering the template with sentinel contents and then *checked* against the real Jinja rendering
  of several conversations; a template it cannot express yields `None` with the reason, and the app refuses to
  chat rather than send a wrong prompt.
* `benchmark_prompts`: the profiler's fixed text (the first N tokens of the bundled WikiText-2 excerpt) cut at
  the context lengths the bundle's KV cache holds, decoded back to text because the app can only pass text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ROLES = ("system", "user", "assistant")
_S1, _S2 = "\x01EDGECPM-A\x01", "\x01EDGECPM-B\x01"
PROMPT_FORMAT_SCHEMA = "edgecpm.prompt-format/1"

# conversations the derived format must render byte-identically to the template (the contract tests reuse them)
CHECK_CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "Hi!"},),
    ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}),
    (
        {"role": "user", "content": "Bonjour, ça va ? 你好 🙂"},
        {"role": "assistant", "content": "Oui.\nEt toi ?"},
        {"role": "user", "content": "Très bien."},
    ),
    (
        {"role": "system", "content": "S"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": ""},
    ),
)


def render_with_format(fmt: dict[str, Any], messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
    """The app's rendering rule, in Python (used only to check a derived format against the template)."""
    out = [fmt["start"][messages[0]["role"]]] if messages else []
    for m in messages:
        out += [fmt["prefix"][m["role"]], m["content"], fmt["suffix"][m["role"]]]
    if add_generation_prompt:
        out.append(fmt["generation_prompt"])
    return "".join(out)


def prompt_format(render: Any) -> tuple[dict[str, Any] | None, str]:
    """Reduce `render(messages, add_generation_prompt) -> str` to the app's format; (format, "") or (None, why)."""
    from edgecpm.errors import EdgecpmError

    start: dict[str, str] = {}
    prefix: dict[str, str] = {}
    suffix: dict[str, str] = {}
    try:
        for role in ROLES:
            one = render([{"role": role, "content": _S1}], False)
            two = render([{"role": role, "content": _S1}, {"role": role, "content": _S2}], False)
            if one.count(_S1) != 1 or two.count(_S2) != 1:
                return None, f"the template does not print a {role} message's content exactly once"
            suf = two.split(_S2, 1)[1]
            middle = two.split(_S1, 1)[1].split(_S2, 1)[0]
            if not one.endswith(_S1 + suf) or not middle.startswith(suf):
                return None, f"the template's {role} turns do not end the same way"
            pre = middle[len(suf) :]
            head = one.split(_S1, 1)[0]
            if not head.endswith(pre):
                return None, f"the template's first {role} turn does not start like the later ones"
            start[role], prefix[role], suffix[role] = head[: len(head) - len(pre)], pre, suf
        user = [{"role": "user", "content": _S1}]
        plain, with_gen = render(user, False), render(user, True)
        if not with_gen.startswith(plain):
            return None, "the generation prompt is not appended at the end"
        fmt = {
            "schema": PROMPT_FORMAT_SCHEMA,
            "start": start,
            "prefix": prefix,
            "suffix": suffix,
            "generation_prompt": with_gen[len(plain) :],
        }
        for conv in CHECK_CONVERSATIONS:
            for gen in (True, False):
                if render_with_format(fmt, conv, gen) != render(list(conv), gen):
                    return None, "the template is not a fixed wrapping per role (it branches on content or position)"
    except EdgecpmError as exc:
        return None, str(exc)
    return fmt, ""


def benchmark_prompts(tokenizer: Any, max_context_len: int, text: str | None = None) -> dict[str, Any]:
    """The profiler's prompts that fit this bundle: first N tokens of its text, N from its context lengths."""
    from edgecpm.profiling.profiler import DEFAULT_CONTEXTS, DEFAULT_DECODE_TOKENS, default_text

    decode = min(DEFAULT_DECODE_TOKENS, max(2, max_context_len // 4))
    # the app needs room for BOS and the runner's last position: prompt + decode + 2 <= context
    fits = [c for c in DEFAULT_CONTEXTS if c + decode + 2 <= max_context_len]
    contexts = fits or [max(1, (max_context_len - decode) // 2)]
    ids = tokenizer.encode(text if text is not None else default_text(), add_bos=False)
    prompts = [{"context": c, "text": tokenizer.decode(ids[:c], skip_special=False)} for c in contexts]
    return {
        "source": "WikiText-2 validation excerpt (bundled), as edgecpm profile uses it",
        "decode_tokens": decode,
        "temperature": 0.0,
        "prompts": prompts,
    }
