"""Applier placeholder."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Applier", "DatabaseSnapshot"]


@dataclass(frozen=True)
class DatabaseSnapshot:
    index: int
    term: int
    data: bytes


class Applier:
    applied_index: int = 0

    async def apply(self, index: int, payload: bytes, *, term: int = 0) -> None:
        raise NotImplementedError
