from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from microtrio._db import Database, ExtensionRegistry


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """An open single-member database (local committer)."""
    async with trio.open_nursery() as nursery:
        database = Database(tmp_path / "database" / "microtrio.db", extensions=ExtensionRegistry())
        with trio.fail_after(20):
            await nursery.start(database.run)
            await database.open(bootstrap=True)
        yield database
        with trio.fail_after(20):
            await database.close()
