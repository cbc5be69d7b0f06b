"""The stamps of ``bench/trace_write.py`` (see sitecustomize.py beside this file)."""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path
from typing import Any

_events: list[tuple[float, str]] = []
#: ``time.monotonic`` (one clock for every process), or with ``MICROTRIO_TRACE_CPU=1`` the
#: CPU time of the stamping thread (``bench/trace_write.py --cpu``: where the event loop's
#: CPU goes, leader only; those stamps cannot be compared across processes).
_stamp_clock = time.thread_time if os.environ.get("MICROTRIO_TRACE_CPU") == "1" else time.monotonic


def _stamp(stage: str) -> None:
    _events.append((_stamp_clock(), stage))


def _dump(directory: str) -> None:
    path = Path(directory) / f"{os.getpid()}.trace"
    with path.open("w") as out:
        out.write(f"# {' '.join(sys.argv)}\n")
        for t, stage in _events:
            out.write(f"{t:.6f} {stage}\n")


def _kind(msg: Any) -> str:
    from microtrio.raft import MsgApp

    name = type(msg).__name__
    if isinstance(msg, MsgApp):
        return "MsgApp+e" if msg.entries else ("MsgApp/commit" if not msg.ack else "MsgApp/empty")
    return name


class _Finder:
    """Patch the library the moment its modules are imported (the daemon imports them)."""

    def __init__(self) -> None:
        self.done = False

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "microtrio._daemon" and not self.done:
            self.done = True
            sys.meta_path.remove(self)
            _patch()
        return None


def install(directory: str) -> None:
    atexit.register(_dump, directory)
    sys.meta_path.insert(0, _Finder())


def _wrap_sync(owner: Any, attr: str, before: Any, after: Any = None) -> None:
    orig = getattr(owner, attr)

    def wrapper(*args: Any, **kw: Any) -> Any:
        before(*args, **kw)
        result = orig(*args, **kw)
        if after is not None:
            after(*args, **kw)
        return result

    setattr(owner, attr, wrapper)


def _wrap_async(owner: Any, attr: str, before: Any, after: Any = None) -> None:
    orig = getattr(owner, attr)

    async def wrapper(*args: Any, **kw: Any) -> Any:
        before(*args, **kw)
        result = await orig(*args, **kw)
        if after is not None:
            after(*args, **kw)
        return result

    setattr(owner, attr, wrapper)


def _patch() -> None:
    from microtrio._api import _http1
    from microtrio._db import _database
    from microtrio._replication import _driver, _raftdb, _storage, _transport

    def tx(self: Any, messages: Any) -> None:
        for msg in messages:
            _stamp(f"tx {_kind(msg)}")

    orig_send = _transport.Transport.send

    def send(self: Any, messages: Any) -> None:
        messages = list(messages)
        tx(self, messages)
        orig_send(self, messages)

    _transport.Transport.send = send
    orig_deliver = _transport.Transport._deliver

    async def deliver(self: Any, messages: list[Any]) -> None:
        for msg in messages:
            _stamp(f"rx {_kind(msg)}")
        await orig_deliver(self, messages)

    _transport.Transport._deliver = deliver
    orig_encode = _transport.encode_record

    def encode(node_id: int, payloads: Any) -> bytes:
        _stamp("wire>")
        return orig_encode(node_id, payloads)

    _transport.encode_record = encode

    def step(self: Any, node: Any, event: Any) -> None:
        if isinstance(event, _driver._Request):
            _stamp("driver request")
        else:
            _stamp(f"step {_kind(event)}")

    _wrap_sync(_driver.RaftDriver, "_handle", step)
    from microtrio import raft as _raft

    _wrap_sync(
        _raft.RaftNode, "step", lambda *a: _stamp("node step>"), lambda *a: _stamp("node step<")
    )
    _wrap_sync(
        _raft.RaftNode, "ready", lambda *a: _stamp("node ready>"), lambda *a: _stamp("node ready<")
    )

    def ready_in(self: Any, node: Any, rd: Any) -> None:
        _stamp("ready+e" if rd.entries else ("ready+c" if rd.committed_entries else "ready"))

    def ready_out(self: Any, node: Any, rd: Any) -> None:
        _stamp("ready done")

    _wrap_async(_driver.RaftDriver, "_handle_ready", ready_in, ready_out)
    _wrap_async(
        _storage.AsyncLogStore,
        "persist",
        lambda self, hs, entries, snap, **k: _stamp("persist>" if entries else "persist hs>"),
        lambda self, hs, entries, snap, **k: _stamp("persist<" if entries else "persist hs<"),
    )
    _wrap_sync(_driver.RaftDriver, "_record_applied", lambda self, i, t: _stamp("applied"))
    _wrap_async(
        _raftdb.RaftCommitter,
        "commit",
        lambda self, payload: _stamp("commit>"),
        lambda self, payload: _stamp("commit<"),
    )
    _wrap_async(_database.Database, "_run_batch", lambda *a, **k: _stamp("batch>"))
    orig_parse = _http1.parse_head

    def parse(head: bytes) -> Any:
        _stamp("http head")
        return orig_parse(head)

    _http1.parse_head = parse
    _patch_store()
    _patch_more()
    _wrap_async(
        _http1._Connection,
        "_send",
        lambda *a, **k: _stamp("http send>"),
        lambda *a, **k: _stamp("http send<"),
    )


def _patch_store() -> None:
    from microtrio._replication import _logstore

    _wrap_sync(
        _logstore.LogStore,
        "persist",
        lambda *a, **k: _stamp("store>"),
        lambda *a, **k: _stamp("store<"),
    )
    orig_sync = _logstore.sync_data

    def sync_data(fd: int) -> None:
        _stamp("fsync>")
        orig_sync(fd)
        _stamp("fsync<")

    _logstore.sync_data = sync_data

    from microtrio._replication import _uring

    # the io_uring path: submitted from the event loop / completion seen on it
    _wrap_async(
        _uring.DurableRing,
        "write",
        lambda *a, **k: _stamp("ring write>"),
        lambda *a, **k: _stamp("ring write<"),
    )


def _patch_more() -> None:
    from microtrio._api import _fast
    from microtrio._db import _apply, _database

    _wrap_async(_http1_conn(), "_answer", lambda *a, **k: _stamp("http answer>"))
    _wrap_async(_fast.FastDispatcher, "respond_direct", lambda *a, **k: _stamp("fast>"))
    _wrap_async(_database.Database, "execute_many", lambda *a, **k: _stamp("db execute>"))
    _wrap_async(
        _apply.Applier,
        "apply",
        lambda *a, **k: _stamp("apply>"),
        lambda *a, **k: _stamp("apply<"),
    )
    _wrap_sync(
        _apply.Applier,
        "_apply_sync",
        lambda *a, **k: _stamp("apply sql>"),
        lambda *a, **k: _stamp("apply sql<"),
    )
    _wrap_sync(
        _apply.Applier,
        "_notify",
        lambda *a, **k: _stamp("apply notify>"),
        lambda *a, **k: _stamp("apply notify<"),
    )


def _http1_conn() -> Any:
    from microtrio._api import _http1

    return _http1._Connection
