"""The replicated database (placeholder; implementation follows)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import apsw
import trio

from ._apply import Applier, DatabaseSnapshot
from ._committer import Committer, LocalCommitter
from ._extensions import ExtensionRegistry
from ._schema import SchemaUpdate
from ._sql import SQLResult
from ._status import DatabaseStatus

T = TypeVar("T")

__all__ = ["Database"]


class Database:
    """One member's replicated SQLite database.

    Lifecycle: build it, ``await nursery.start(db.run)`` (opens the file and starts the
    writer task), then ``await db.open(bootstrap=...)`` (schema updates, status
    online), ``await db.close()`` to stop (status offline; ``run`` returns).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        extensions: ExtensionRegistry,
        schema_updates: Sequence[SchemaUpdate] = (),
        committer_factory: Callable[[Applier], Committer] = LocalCommitter,
        patch_path: str | os.PathLike[str] | None = None,
        max_batch: int = 256,
    ) -> None:
        self.status = DatabaseStatus.NOT_INITIALIZED
        raise NotImplementedError

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    async def open(self, *, bootstrap: bool, member_name: str | None = None) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def transaction(self, fn: Callable[[apsw.Connection], T]) -> T:
        raise NotImplementedError

    async def read(self, fn: Callable[[apsw.Connection], T], *, stale: bool = False) -> T:
        raise NotImplementedError

    async def execute_sql(self, query: str) -> list[SQLResult]:
        raise NotImplementedError

    async def dump(self, *, schema_only: bool = False) -> str:
        raise NotImplementedError

    def schema_versions(self) -> tuple[int, int, list[str]]:
        raise NotImplementedError

    @property
    def applied_index(self) -> int:
        raise NotImplementedError

    async def snapshot(self) -> DatabaseSnapshot:
        raise NotImplementedError

    async def restore(self, data: bytes) -> None:
        raise NotImplementedError

    def notify_upgrade(self) -> None:
        raise NotImplementedError
