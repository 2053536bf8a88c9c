"""Backends run a model behind the `Backend` protocol; formats register how to open their artifacts."""

from __future__ import annotations

from .base import Backend, register_backend, resolve_backend

__all__ = ["Backend", "register_backend", "resolve_backend"]
