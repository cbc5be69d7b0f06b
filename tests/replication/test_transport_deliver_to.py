"""Transport.deliver_to: inbound messages go straight into a channel the driver gives (its
inbox), back into the transport's own queue with None, and the transport closes its clone
when it closes. A running driver uses it: peers' messages reach the driver in one hop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from _raft_cluster import open_cluster, sql
from test_transport import CEILING, Pki, cluster, hb, pki

from microtrio.raft import Message

__all__ = ["pki"]  # the module-scoped fixture, shared with test_transport


async def test_deliver_to_a_channel_and_back(pki: Pki) -> None:
    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (_, m):
            send, receive = trio.open_memory_channel[Message](16)
            m[2].transport.deliver_to(send)
            m[1].transport.send([hb(1, 2, 1), hb(1, 2, 2)])
            assert [await receive.receive(), await receive.receive()] == [
                hb(1, 2, 1),
                hb(1, 2, 2),
            ]
            assert m[2].transport.inbound.statistics().current_buffer_used == 0
            m[2].transport.deliver_to(None)
            m[1].transport.send([hb(1, 2, 3)])
            assert await m[2].transport.receive() == hb(1, 2, 3)
            with pytest.raises(trio.WouldBlock):
                receive.receive_nowait()
            # the transport's clone was closed when it was redirected away; ours is still open
            m[2].transport.deliver_to(send)
            await m[2].transport.aclose()
            send.send_nowait(hb(1, 2, 4))  # our clone is ours to close
            assert receive.receive_nowait() == hb(1, 2, 4)
            send.close()
            with pytest.raises(trio.EndOfChannel):
                receive.receive_nowait()  # every clone is closed: the transport closed its own


async def test_a_running_driver_takes_messages_without_the_transport_queue(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with open_cluster(tmp_path, 3) as c:
            leader = await c.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            for k in range(10):
                await leader.db.execute("INSERT INTO t VALUES (?)", (k,))
            for member in c.running():
                transport = member.repl.driver._transport
                assert transport._sink is not transport._inbound_send
                assert transport.statistics().received > 0
                # nothing ever waited in the transport's own queue
                assert transport.inbound.statistics().current_buffer_used == 0


async def test_direct_takes_messages_before_the_channel(pki: Pki) -> None:
    """``deliver_to(channel, direct)``: each inbound message is offered to ``direct`` first;
    the ones it takes never reach the channel, the others keep their order. Redirecting
    away (None) drops the hook."""
    taken: list[Message] = []

    def direct(msg: Message) -> bool:
        if msg.commit % 2:  # type: ignore[union-attr]  # heartbeats only here
            taken.append(msg)
            return True
        return False

    with trio.fail_after(CEILING):
        async with cluster(pki, (1, 2)) as (_, m):
            send, receive = trio.open_memory_channel[Message](16)
            m[2].transport.deliver_to(send, direct)
            m[1].transport.send([hb(1, 2, seq) for seq in range(1, 7)])
            got = [await receive.receive() for _ in range(3)]
            assert got == [hb(1, 2, 2), hb(1, 2, 4), hb(1, 2, 6)]
            assert taken == [hb(1, 2, 1), hb(1, 2, 3), hb(1, 2, 5)]
            m[2].transport.deliver_to(None)
            m[1].transport.send([hb(1, 2, 7)])
            assert await m[2].transport.receive() == hb(1, 2, 7)
            assert len(taken) == 3


async def test_read_requests_and_answers_skip_the_drivers(tmp_path: Path) -> None:
    """Linearizable reads on the followers of three voters: the leader answers each read
    request in the connection's receive loop and the follower hands the answer to its
    waiting readers there too; neither driver steps them (nor runs a Ready for them).
    Every read still sees the write that completed before it started."""
    with trio.fail_after(60):
        async with open_cluster(tmp_path, 3) as c:
            leader = await c.leader()
            await leader.db.transaction(sql("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            stepped: list[str] = []
            for member in c.running():
                node = member.repl.driver._node
                assert node is not None

                def step(msg: Message, node: Any = node, real: Any = node.step) -> None:
                    stepped.append(type(msg).__name__)
                    real(msg)

                node.step = step  # type: ignore[method-assign,assignment]
            followers = [m for m in c.running() if m is not leader]
            for k in range(20):
                await leader.db.execute("INSERT INTO t VALUES (?)", (k,))
                for follower in followers:
                    rows = await follower.db.read(
                        lambda conn: list(conn.execute("SELECT count(*) FROM t"))
                    )
                    assert rows == [(k + 1,)]
            assert stepped  # the wrapper sees the rest of the traffic
            assert "MsgReadIndex" not in stepped
            assert "MsgReadIndexResp" not in stepped
