"""Format name -> exporter module, and the one place quant names and export options are checked.

Each exporter module defines `MODEL_FILE`, `OPTIONS` (name -> `Option`), `prepare(job)` (its own planning,
before anything is written) and `write(job, prepared, stage) -> Written` (its files, into the staging
folder); `exporters.shell` does the rest. Which modules exist and their quants come from `formats.TABLE`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgecpm.errors import EdgecpmError
from edgecpm.exporters.artifact import Artifact
from edgecpm.exporters.formats import EXPORT_FORMATS, facts, quant_spec

EXPORTERS = {fmt: facts(fmt).exporter for fmt in EXPORT_FORMATS}


@dataclass(frozen=True)
class Option:
    """One format option: its default and a check returning an error message (None when the value is fine)."""

    default: Any
    check: Callable[[Any], str | None] | None = None


def _count(name: str, least: int) -> Callable[[Any], str | None]:
    return lambda v: (
        None
        if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= least)
        else (f"{name} is {v!r}; expected an integer >= {least}")
    )


# accepted by every format: the CLI's --threads, and shared-layer models integrated in N ODE steps
# (applied when the shell opens the checkpoint)
COMMON_OPTIONS = {"threads": Option(None, _count("threads", 0)), "ode_steps": Option(None, _count("ode_steps", 1))}


def exporter_module(fmt: str) -> Any:
    f = facts(fmt)
    if f.exporter is None:
        raise EdgecpmError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    try:
        return importlib.import_module(f.exporter)
    except ModuleNotFoundError as exc:
        from edgecpm.optional import missing_dependency

        raise missing_dependency(exc, f"the {fmt} exporter") from None


def resolve_options(fmt: str, module: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Unknown names and bad values refused; every option filled with its default."""
    spec = {**COMMON_OPTIONS, **module.OPTIONS}
    unknown = sorted(set(options) - set(spec))
    if unknown:
        raise EdgecpmError(
            f"unknown {facts(fmt).title} export option(s): {', '.join(unknown)}; expected {', '.join(sorted(spec))}"
        )
    resolved = {}
    for name, opt in spec.items():
        value = options.get(name, opt.default)
        if name in options and opt.check is not None:
            problem = opt.check(value)
            if problem:
                raise EdgecpmError(problem)
        resolved[name] = value
    return resolved


def run_export(
    src: Any, fmt: str, out: Any, quant: str | None = None, progress: bool = True, **options: Any
) -> Artifact:
    """Export `src` to `fmt` at `out`; returns the `Artifact` (`.path`, `.model_file`, `.manifest`)."""
    from edgecpm.exporters import shell

    f = facts(fmt)
    module = exporter_module(fmt)
    spec = quant_spec(fmt, quant)
    return shell.run(module, f, src, out, spec.name, resolve_options(fmt, module, options), progress)
