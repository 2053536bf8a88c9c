"""The one exception type users see.

Every problem caused by input (a path, a config field, a weight file, a device name) is raised as
`EdgecpmError` with a single-line message naming what is wrong. The CLI prints that line and exits 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgecpmError(ValueError):
    """Bad input: the message is one line that names the problem and, where possible, what was expected."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(EdgecpmError):
    """A config field is missing, malformed or unsupported."""


class WeightError(EdgecpmError):
    """A weight file is missing, truncated, corrupt or has the wrong shape."""
