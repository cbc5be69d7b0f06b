"""The per-link TCP proxy: forwards, partitions (holding bytes), delays, cuts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from microtrio._errors import ValidationError
from microtrio.testing._nemesis import partition_links
from microtrio.testing._proxy import ProxyMesh, open_proxy_mesh


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(4096):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass


@asynccontextmanager
async def mesh_of(*names: str) -> AsyncIterator[ProxyMesh]:
    async with trio.open_nursery() as nursery:
        targets = {}
        for name in names:
            listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
            targets[name] = ("127.0.0.1", listeners[0].socket.getsockname()[1])
        async with open_proxy_mesh(targets, seed=5) as mesh:
            yield mesh
        nursery.cancel_scope.cancel()


async def connect(mesh: ProxyMesh, src: str, dst: str) -> trio.SocketStream:
    return await trio.open_tcp_stream(*mesh.address(src, dst))


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


async def nothing_arrives(stream: trio.SocketStream, within: float = 0.3) -> bool:
    with trio.move_on_after(within):
        await stream.receive_some(10)
        return False
    return True


async def test_forwards_each_directed_link() -> None:
    with trio.fail_after(20):
        async with mesh_of("a", "b", "c") as mesh:
            assert len({mesh.address(s, d) for s in "abc" for d in "abc" if s != d}) == 6
            for src, dst in (("a", "b"), ("c", "a")):
                s = await connect(mesh, src, dst)
                async with s:
                    await s.send_all(b"ping")
                    assert await receive_exactly(s, 4) == b"ping"
            stats = mesh.statistics()
            assert stats[("a", "b")].bytes_forwarded == 8 and stats[("a", "b")].connections == 1
            assert stats[("b", "a")].connections == 0


async def test_partition_holds_bytes_until_healed_and_is_directed() -> None:
    with trio.fail_after(20):
        async with mesh_of("a", "b") as mesh:
            old = await connect(mesh, "a", "b")
            await old.send_all(b"1")
            assert await receive_exactly(old, 1) == b"1"

            await mesh.partition(frozenset({("a", "b")}))
            await old.send_all(b"2")
            new = await connect(mesh, "a", "b")  # accepted, but goes nowhere
            await new.send_all(b"3")
            other = await connect(mesh, "b", "a")  # the other direction is untouched
            await other.send_all(b"4")
            assert await receive_exactly(other, 1) == b"4"
            assert await nothing_arrives(old) and await nothing_arrives(new)

            await mesh.heal()
            assert await receive_exactly(old, 1) == b"2"
            assert await receive_exactly(new, 1) == b"3"
            for s in (old, new, other):
                await s.aclose()


async def test_symmetric_partition_blocks_both_links() -> None:
    with trio.fail_after(20):
        async with mesh_of("a", "b", "c") as mesh:
            await mesh.partition(partition_links(["a"], ["b", "c"]))
            assert mesh.link("a", "b").blocked and mesh.link("c", "a").blocked
            assert not mesh.link("b", "c").blocked
            s = await connect(mesh, "b", "c")
            async with s:
                await s.send_all(b"x")
                assert await receive_exactly(s, 1) == b"x"


async def test_delay_slows_every_chunk() -> None:
    with trio.fail_after(20):
        async with mesh_of("a", "b") as mesh:
            mesh.set_link("a", "b", delay=0.25)
            s = await connect(mesh, "a", "b")
            async with s:
                t0 = trio.current_time()
                await s.send_all(b"slow")
                assert await receive_exactly(s, 4) == b"slow"
                # One delay on the way there, one on the way back (same link's connection).
                assert trio.current_time() - t0 >= 0.5


async def test_drop_cuts_the_connection() -> None:
    with trio.fail_after(20):
        async with mesh_of("a", "b") as mesh:
            mesh.set_link("a", "b", drop=1.0)
            s = await connect(mesh, "a", "b")
            async with s:
                await s.send_all(b"lost")
                with pytest.raises(trio.BrokenResourceError):
                    data = await s.receive_some(10)
                    if not data:
                        raise trio.BrokenResourceError("closed")
            assert mesh.statistics()[("a", "b")].cuts == 1


async def test_rejects_bad_controls() -> None:
    with trio.fail_after(20):
        async with mesh_of("a", "b") as mesh:
            with pytest.raises(ValidationError):
                mesh.set_link("a", "b", drop=1.5)
            with pytest.raises(ValidationError):
                mesh.set_link("a", "b", delay=-1)
            with pytest.raises(ValidationError):
                await mesh.partition(frozenset({("a", "zz")}))
            assert not mesh.link("a", "b").blocked
    with pytest.raises(ValidationError):
        async with open_proxy_mesh({"a": ("127.0.0.1", 1)}):
            pass
