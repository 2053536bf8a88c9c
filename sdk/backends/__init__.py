"""Backends run a model behind the `Backend` protocol; `registry.BACKENDS` is the one table of them."""

from __future__ import annotations

from edgecpm.backends.base import Backend
from edgecpm.backends.registry import BACKENDS, Opened, available_backends, open_backend

__all__ = ["BACKENDS", "Backend", "Opened", "available_backends", "open_backend"]
