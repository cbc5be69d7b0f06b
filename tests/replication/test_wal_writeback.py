"""Early writeback of the WAL between checkpoints (``microtrio/_db/_writeback.py``): every
WRITEBACK_PAGES pages a replicated member has the kernel start writing its WAL's dirty
pages, so that a checkpoint's sync does not flush the whole WAL at once."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from pathlib import Path

import pytest
import trio
from _raft_cluster import open_cluster

from microtrio._db import _apply, _writeback
from microtrio._db._writeback import WalWriteback

CEILING = 90.0
_REAL = _writeback._sync_file_range()
PAGES = 1000  # checkpoint interval in these tests
WRITEBACK = 64


class _Recorder:
    """Stands in for libc's sync_file_range: records (inode, flags), then calls the real one
    where there is one."""

    def __init__(self, result: int = 0) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result
        self.real = _REAL

    def __call__(self, fd: int, offset: int, nbytes: int, flags: int) -> int:
        self.calls.append((os.fstat(fd).st_ino, flags))
        if self.result:
            ctypes.set_errno(errno.EIO)
            return self.result
        if self.real is not None:
            return int(self.real(fd, offset, nbytes, flags))  # type: ignore[operator]
        return 0


async def test_replicated_members_write_their_wal_back_between_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorders: list[_Recorder] = []

    def make() -> _Recorder:
        recorders.append(_Recorder())
        return recorders[-1]

    monkeypatch.setattr(_writeback, "_sync_file_range", make)
    monkeypatch.setattr(_apply, "CHECKPOINT_PAGES", PAGES)
    monkeypatch.setattr(_apply, "WRITEBACK_PAGES", WRITEBACK)
    pages = PAGES * 5 // 2
    with trio.fail_after(CEILING):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.leader()
            await leader.db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            blob = b"w" * 30_000
            entries = pages * 4096 // len(blob)  # about 10 WAL pages each
            for k in range(entries):
                await leader.db.execute("INSERT INTO t VALUES (?, ?)", (k, blob))
            await cluster.wait_applied(leader.db.applied_index)
            wal_inodes = set()
            for member in cluster.running():
                stats = member.db.statistics()
                # one per WRITEBACK pages between checkpoints: not one per entry, not none
                assert 10 <= stats.wal_writebacks <= entries // 4
                assert stats.background_checkpoints >= 2
                wal = member.db_path.with_name(member.db_path.name + "-wal")
                wal_inodes.add(wal.stat().st_ino)
    calls = [call for r in recorders for call in r.calls]
    assert len(calls) >= 30
    # every call started the writeback (no wait, no sync) of a member's WAL file
    assert {flags for _, flags in calls} == {2}
    assert {inode for inode, _ in calls} == wal_inodes


def test_writeback_opens_the_wal_when_it_exists_and_again_after_it_was_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(_writeback, "_sync_file_range", lambda: recorder)
    wal = tmp_path / "db-wal"
    writeback = WalWriteback(str(wal))
    assert writeback.available
    writeback.kick()  # no WAL yet: nothing to do, no error
    assert writeback.kicks == 0 and recorder.calls == []
    wal.write_bytes(b"x" * 8192)
    writeback.kick()
    first = wal.stat().st_ino
    wal.unlink()
    wal.write_bytes(b"y" * 8192)  # SQLite removed the WAL and made a new one
    writeback.kick()
    assert writeback.kicks == 2
    assert [inode for inode, _ in recorder.calls] == [first, wal.stat().st_ino]
    writeback.close()
    writeback.close()  # idempotent


def test_a_failing_writeback_is_reported_once_and_not_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = _Recorder(result=-1)
    monkeypatch.setattr(_writeback, "_sync_file_range", lambda: recorder)
    wal = tmp_path / "db-wal"
    wal.write_bytes(b"x" * 4096)
    writeback = WalWriteback(str(wal))
    with caplog.at_level(logging.WARNING, logger="microtrio.db"):
        writeback.kick()
        writeback.kick()
    assert len(recorder.calls) == 1
    assert not writeback.available and writeback.kicks == 0
    assert [r.getMessage() for r in caplog.records if "writeback" in r.getMessage()] == [
        f"WAL writeback of {wal} failed ({os.strerror(errno.EIO)}); not tried again"
    ]
    writeback.close()


def test_without_sync_file_range_writeback_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_writeback, "_sync_file_range", lambda: None)
    wal = tmp_path / "db-wal"
    wal.write_bytes(b"x" * 4096)
    writeback = WalWriteback(str(wal))
    assert not writeback.available
    writeback.kick()
    assert writeback.kicks == 0
    writeback.close()


@pytest.mark.skipif(not os.uname().sysname == "Linux", reason="sync_file_range is Linux only")
def test_the_real_call_is_found_on_linux(tmp_path: Path) -> None:
    wal = tmp_path / "db-wal"
    wal.write_bytes(b"x" * 4096)
    writeback = WalWriteback(str(wal))
    assert writeback.available
    writeback.kick()
    assert writeback.kicks == 1
    writeback.close()
