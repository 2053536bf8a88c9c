"""Chat templates: the checkpoint's own Jinja template, else MiniCPM4's ChatML."""

from __future__ import annotations

from collections.abc import Sequence

from edgecpm.errors import EdgecpmError

MINICPM4_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# A chat template comes from the checkpoint (untrusted). jinja2's sandbox blocks attribute escapes and
# mutation but not resource use, so the products that can explode (`'a' * 10**10`, `10 ** 10 ** 10`, padding
# filters) are bounded, and rendering has a budget of executed template lines.
MAX_RENDER_CHARS = 1 << 22  # 4 Mi characters: far above any real prompt template output
MAX_RENDER_LINES = 2_000_000  # Python line events while the compiled template runs
_WIDTH_FILTERS = ("center", "indent", "wordwrap", "truncate", "format", "replace", "batch", "slice")


def _sandbox():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "%", "+"])

        def call_binop(self, context, operator, left, right):  # noqa: ANN001 - jinja2's signature
            if (
                operator == "**"
                and isinstance(right, (int, float))
                and abs(right) > 64
                and isinstance(left, (int, float))
                and abs(left) > 1
            ):
                raise EdgecpmError("chat template error: exponent too large")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDER_CHARS:
                        raise EdgecpmError("chat template error: repetition too large")
            result = super().call_binop(context, operator, left, right)
            if isinstance(result, (str, list, tuple)) and len(result) > MAX_RENDER_CHARS:
                raise EdgecpmError("chat template error: value too large")
            return result

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
    for name in _WIDTH_FILTERS:
        env.filters[name] = _bounded_filter(env.filters[name])
    return env


def _bounded_filter(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for v in (*args, *kwargs.values()):
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 100_000:
                raise EdgecpmError(f"chat template error: argument {v} to filter {fn.__name__} is too large")
        return fn(*args, **kwargs)

    return wrapper


def render_chat(
    template: str | None,
    messages: Sequence[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    import sys

    from jinja2 import TemplateError

    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise EdgecpmError(f"chat message {i} must be a dict with 'role' and 'content'")
    env = _sandbox()

    def raise_exception(message: str) -> None:
        raise EdgecpmError(f"chat template error: {message}")

    env.globals["raise_exception"] = raise_exception
    budget = [MAX_RENDER_LINES]

    def tracer(frame, event, arg):  # noqa: ANN001 - sys.settrace's signature
        if event == "line":
            budget[0] -= 1
            if budget[0] < 0:
                raise EdgecpmError("chat template error: rendering takes too long")
        return tracer

    previous = sys.gettrace()
    try:
        compiled = env.from_string(template or MINICPM4_CHATML)
        sys.settrace(tracer)
        try:
            out = compiled.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
            )
        finally:
            sys.settrace(previous)
    except EdgecpmError:
        raise
    except TemplateError as exc:
        raise EdgecpmError(f"chat template error: {exc}") from None
    except (RecursionError, MemoryError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as exc:
        # the template is user input: whatever it does wrong at render time is a bad template
        raise EdgecpmError(f"chat template error: {type(exc).__name__}: {exc}") from None
    if len(out) > MAX_RENDER_CHARS:
        raise EdgecpmError("chat template error: output too large")
    return out
