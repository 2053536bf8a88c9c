"""Chat templates: the checkpoint's own Jinja template, else MiniCPM4's ChatML."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import EdgecpmError

MINICPM4_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def render_chat(template: str | None, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "") -> str:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise EdgecpmError(f"chat message {i} must be a dict with 'role' and 'content'")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise EdgecpmError(f"chat template error: {message}")

    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template or MINICPM4_CHATML).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token=bos_token,
            eos_token=eos_token)
    except TemplateError as exc:
        raise EdgecpmError(f"chat template error: {exc}") from None
