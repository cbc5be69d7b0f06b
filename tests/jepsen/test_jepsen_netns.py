"""Network namespaces: three members talk, a partition cuts them, healing restores, cleanup."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import trio

from microtrio.testing._nemesis import asymmetric_links, partition_links
from microtrio.testing._netns import (
    NetnsNetwork,
    can_connect,
    netns_unavailable_reason,
    open_netns_network,
)

UNAVAILABLE = netns_unavailable_reason()
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or ""),
]

MEMBERS = ("m0", "m1", "m2")

_SERVER = """
import socket, sys, threading
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
def echo(c):
    while data := c.recv(100):
        c.sendall(data)
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""

# One long-lived connection; each line on stdin sends a byte and reports whether it came back.
_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.settimeout(float(sys.argv[3]))
print("connected", flush=True)
for line in sys.stdin:
    c.sendall(b"x")
    try:
        print("echo" if c.recv(100) else "closed", flush=True)
    except TimeoutError:
        print("timeout", flush=True)
"""


@pytest.fixture
async def net() -> AsyncIterator[NetnsNetwork]:
    async with open_netns_network(MEMBERS) as network:
        yield network


async def namespaces() -> str:
    proc = await trio.run_process(["ip", "netns", "list"], capture_stdout=True)
    return proc.stdout.decode()


async def serve(net: NetnsNetwork, member: str, nursery: trio.Nursery) -> int:
    """A TCP listener in ``member``'s namespace on its address; returns the chosen port."""
    proc = await trio.lowlevel.open_process(
        [*net.exec_prefix(member), sys.executable, "-c", _SERVER, net.address(member)],
        stdout=subprocess.PIPE,
    )

    async def reap() -> None:
        try:
            await trio.sleep_forever()
        finally:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()

    nursery.start_soon(reap)
    assert proc.stdout is not None
    data = b""
    while not data.endswith(b"\n"):
        chunk = await proc.stdout.receive_some(64)
        assert chunk, "listener exited"
        data += chunk
    return int(data)


async def from_hub(net: NetnsNetwork, dst: str, port: int) -> bool:
    """Whether a TCP connection from the hub namespace to ``dst`` opens."""
    script = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1.5)"
    cmd = [*net.hub_prefix(), sys.executable, "-c", script, net.address(dst), str(port)]
    proc = await trio.run_process(cmd, check=False, stderr=subprocess.DEVNULL)
    return proc.returncode == 0 and net.hub_address == "192.0.2.254"


async def test_partition_cuts_and_heal_restores(net: NetnsNetwork) -> None:
    with trio.fail_after(90):
        assert net.address("m0") == "192.0.2.1" and net.address("m2") == "192.0.2.3"
        assert net.namespace("m1") in await namespaces()
        async with trio.open_nursery() as nursery:
            ports = {m: await serve(net, m, nursery) for m in MEMBERS}

            async def link(src: str, dst: str) -> bool:
                return await can_connect(net, src, dst, ports[dst], connect_timeout=1.5)

            assert await link("m0", "m1") and await link("m1", "m2") and await link("m2", "m0")

            await net.partition(partition_links(["m0"], ["m1", "m2"]))
            assert not await link("m0", "m1")
            assert not await link("m2", "m0")
            assert await link("m1", "m2")  # the majority still talks
            # the hub (where the campaign's clients come in) still reaches the cut-off member
            assert await from_hub(net, "m0", ports["m0"]) and await from_hub(net, "m1", ports["m1"])

            # One direction only: m1 -> m0 is cut; a TCP handshake needs both, so m0 -> m1
            # fails too, but m0's other links are untouched.
            await net.partition(asymmetric_links("m0", ["m1"]))
            assert net.blocked == {("m1", "m0")}
            assert not await link("m1", "m0")
            assert await link("m0", "m2") and await link("m2", "m0")

            await net.heal()
            assert net.blocked == frozenset()
            assert await link("m0", "m1") and await link("m1", "m0")
            nursery.cancel_scope.cancel()


async def test_established_connection_stalls_and_recovers(net: NetnsNetwork) -> None:
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            port = await serve(net, "m1", nursery)
            client = await trio.lowlevel.open_process(
                [*net.exec_prefix("m0"), sys.executable, "-c", _CLIENT, net.address("m1"),
                 str(port), "1.0"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )  # fmt: skip
            assert client.stdin is not None and client.stdout is not None
            lines = LineReader(client.stdout)

            async def probe() -> str:
                assert client.stdin is not None
                await client.stdin.send_all(b"probe\n")
                return await lines.next()

            try:
                assert await lines.next() == "connected"
                assert await probe() == "echo"
                await net.partition(frozenset({("m1", "m0")}))  # the replies are lost
                assert await probe() == "timeout"
                await net.heal()
                # TCP retransmits (backing off): the same connection comes back.
                answers = [await probe()]
                while answers[-1] == "timeout" and len(answers) < 20:
                    answers.append(await probe())
                assert answers[-1] == "echo", answers
            finally:
                client.kill()
                with trio.CancelScope(shield=True):
                    await client.wait()
            nursery.cancel_scope.cancel()


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = b""

    async def next(self) -> str:
        while b"\n" not in self._buf:
            chunk = await self._stream.receive_some(256)
            assert chunk, "process exited"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()


async def test_namespaces_are_deleted_even_on_failure() -> None:
    with trio.fail_after(60):
        names: list[str] = []
        with pytest.raises(RuntimeError, match="boom"):
            async with open_netns_network(["a", "b"]) as network:
                names = [network.hub, network.namespace("a"), network.namespace("b")]
                listed = await namespaces()
                assert all(n in listed for n in names)
                raise RuntimeError("boom")
        listed = await namespaces()
        assert names and not any(n in listed for n in names)
