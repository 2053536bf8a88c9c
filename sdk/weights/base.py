"""The `WeightSource` protocol and the in-memory source used by tests and converters."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol, runtime_checkable

import torch

from edgecpm.errors import WeightError


@runtime_checkable
class WeightSource(Protocol):
    """Read-only, lazy access to tensors by canonical Hugging Face name."""

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def dtype(self, name: str) -> torch.dtype: ...

    def get(self, name: str) -> torch.Tensor:
        """A tensor owned by the caller (never a view of a mapping that will be closed)."""
        ...

    def __contains__(self, name: object) -> bool: ...

    def total_bytes(self) -> int: ...


class MemorySource:
    """Tensors already in memory (tests, and sources built by converting another model)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._tensors = dict(tensors)

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._lookup(name).shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._lookup(name).dtype

    def get(self, name: str) -> torch.Tensor:
        return self._lookup(name).clone()

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def total_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors.values())

    def _lookup(self, name: str) -> torch.Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise WeightError(f"tensor {name!r} is not in the checkpoint") from None
