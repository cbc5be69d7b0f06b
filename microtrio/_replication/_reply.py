"""A one-shot answer from the driver task to a task that waits for it."""

from __future__ import annotations

from typing import Generic, TypeVar, final

import trio

__all__ = ["Reply"]

_T = TypeVar("_T")


@final
class Reply(Generic[_T]):
    """A one-shot answer from the driver task to a waiting caller."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: _T | None = None
        self._error: BaseException | None = None

    def set(self, value: _T) -> None:
        if not self._done.is_set():
            self._value = value
            self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    async def wait(self) -> _T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
