"""Requests to the leader on the Raft channel (:mod:`._wire`), both sides, for the driver.

Asking side (a member that does not lead): :meth:`Forwarding.forward` sends a write batch
(:class:`ForwardPropose`) and waits for the index and term it was proposed at;
:meth:`Forwarding.execute_remote` sends a statement request (:class:`ForwardExecute`) and
waits for the leader's encoded reply. Request ids are random, so an answer meant for an
earlier run of this member can never match a new request; an answer counts only from the
member that was asked.

Leader side: a :class:`ForwardPropose` is proposed at once (in the driver task); a
:class:`ForwardExecute` runs in its own task in the driver's nursery (it waits for its
batch's commit) through the database's :data:`RemoteHandler`, at most ``remote_limit`` at a
time. Refusals (not the leader, a transfer running, too busy) are answered at once: the
request surely did not run, and the asking member may try again.

The leader also remembers who waits for a commit (:meth:`Forwarding.waits_for_commit`): a
member whose forwarded write was proposed at an index that it was not yet told is committed,
or whose statement request runs here, waits for its own apply of that write before it
answers its caller, so the driver tells it about new commits at once instead of holding the
notification back (:mod:`._commit_hold`). Answers leave through ``send`` (the driver's, which
puts a held commit notification ahead of a statement request's answer).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import final

import trio

from .._errors import UnavailableError
from ..raft import Message, NotLeaderError, ProposalDroppedError, RaftNode, StateRole
from ._driver_config import RemoteHandler
from ._reply import Reply
from ._transport import Transport
from ._wire import (
    ExecuteResult,
    ForwardExecute,
    ForwardPropose,
    ForwardResult,
    ForwardStatus,
    Wire,
)

__all__ = ["Forwarding"]

logger = logging.getLogger("microtrio.replication.driver")


@final
class Forwarding:
    """Forwarded proposals and statement requests of one member (see the module docstring)."""

    def __init__(
        self,
        node_id: int,
        *,
        transport: Transport[Wire],
        rng: random.Random,
        remote_limit: int,
        name: str,
        send: Callable[[Sequence[Wire]], object] | None = None,
    ) -> None:
        self._id = node_id
        self._transport = transport
        self._send = send if send is not None else transport.send
        self._rng = rng
        self._remote_limit = remote_limit
        self._name = name
        # request id -> (the leader asked, its answer)
        self._forwards: dict[int, tuple[int, Reply[ForwardResult]]] = {}
        self._executes: dict[int, tuple[int, Reply[ExecuteResult]]] = {}
        self._handler: RemoteHandler | None = None
        self._running = 0
        # leader side: member -> the highest index its forwarded writes were proposed at
        # (until it is sent a commit index that reaches it), and -> its statement requests
        # running here
        self._proposed: dict[int, int] = {}
        self._serving: dict[int, int] = {}
        #: Where statement requests run (the driver's nursery while it runs).
        self.nursery: trio.Nursery | None = None

    # -- asking side (any task) --

    async def forward(self, leader: int, data: bytes) -> ForwardResult:
        """Send ``data`` to ``leader`` for proposing; wait for its answer (bound the wait)."""
        request_id = self._rng.getrandbits(63) or 1
        reply: Reply[ForwardResult] = Reply()
        self._forwards[request_id] = (leader, reply)
        try:
            self._transport.send([ForwardPropose(self._id, leader, request_id, data)])
            return await reply.wait()
        finally:
            self._forwards.pop(request_id, None)

    async def execute_remote(self, leader: int, data: bytes) -> ExecuteResult:
        """Send a statement request to ``leader``; wait for its answer (bound the wait)."""
        request_id = self._rng.getrandbits(63) or 1
        reply: Reply[ExecuteResult] = Reply()
        self._executes[request_id] = (leader, reply)
        try:
            self._transport.send([ForwardExecute(self._id, leader, request_id, data)])
            return await reply.wait()
        finally:
            self._executes.pop(request_id, None)

    def fail_all(self, error: BaseException) -> None:
        for _, forward in self._forwards.values():
            forward.fail(error)
        for _, execute in self._executes.values():
            execute.fail(error)

    def leader_changed(self, leader: int) -> None:
        """This member now sees ``leader`` (0: none) as the leader: requests waiting for
        an answer from another member fail with :class:`UnavailableError` (their outcome
        is unknown: the old leader may have run them)."""
        self._proposed.clear()  # leader side: whoever leads next tells them its commits
        error = UnavailableError(f"{self._name}: the leader changed while it was asked")
        for asked, forward in self._forwards.values():
            if asked != leader:
                forward.fail(error)
        for asked, execute in self._executes.values():
            if asked != leader:
                execute.fail(error)

    # -- the driver task --

    def waits_for_commit(self, node_id: int, commit: int) -> bool:
        """Leader side: whether a commit notification to ``node_id`` carrying ``commit``
        must leave at once: a statement request of it runs here, or a write it forwarded
        was proposed at an index it was not told is committed (this one tells it, if
        ``commit`` reaches that index: the caller sends it)."""
        if self._serving.get(node_id):
            return True
        proposed = self._proposed.get(node_id)
        if proposed is None:
            return False
        if commit >= proposed:
            del self._proposed[node_id]
        return True

    def serve_remote(self, handler: RemoteHandler) -> None:
        """Run :class:`ForwardExecute` requests with ``handler`` while this member leads."""
        self._handler = handler

    def handle(self, node: RaftNode, msg: Wire) -> Message | None:
        """Handle a forwarding message; return a Raft message for the node to step."""
        if isinstance(msg, ForwardPropose):
            result = self._propose(node, msg)
            if result.status == ForwardStatus.OK:
                self._proposed[msg.src] = max(self._proposed.get(msg.src, 0), result.index)
            self._send([result])
        elif isinstance(msg, ForwardResult):
            asked, reply = self._forwards.get(msg.request_id, (0, None))
            if reply is not None and asked == msg.src:
                reply.set(msg)
        elif isinstance(msg, ForwardExecute):
            self._start_execute(node, msg)
        elif isinstance(msg, ExecuteResult):
            asked, exec_reply = self._executes.get(msg.request_id, (0, None))
            if exec_reply is not None and asked == msg.src:
                exec_reply.set(msg)
        else:
            return msg
        return None

    def _propose(self, node: RaftNode, msg: ForwardPropose) -> ForwardResult:
        try:
            index = node.propose(msg.data)
        except NotLeaderError as exc:
            return ForwardResult(
                self._id, msg.src, msg.request_id, ForwardStatus.NOT_LEADER, leader=exc.leader_id
            )
        except ProposalDroppedError:
            return ForwardResult(
                self._id, msg.src, msg.request_id, ForwardStatus.DROPPED, leader=self._id
            )
        return ForwardResult(self._id, msg.src, msg.request_id, ForwardStatus.OK, index, node.term)

    def _start_execute(self, node: RaftNode, msg: ForwardExecute) -> None:
        """Run a statement request in its own task (it waits for its commit)."""
        status, leader = ForwardStatus.OK, self._id
        if node.role is not StateRole.LEADER or self._handler is None or self.nursery is None:
            status, leader = ForwardStatus.NOT_LEADER, node.lead
        elif node.lead_transferee or self._running >= self._remote_limit:
            status = ForwardStatus.DROPPED
        if status != ForwardStatus.OK or self.nursery is None:
            result = ExecuteResult(self._id, msg.src, msg.request_id, status, leader=leader)
            self._send([result])
            return
        self._running += 1
        self._serving[msg.src] = self._serving.get(msg.src, 0) + 1
        self.nursery.start_soon(self._serve_execute, msg)

    async def _serve_execute(self, msg: ForwardExecute) -> None:
        handler = self._handler
        assert handler is not None
        try:
            data, index = await handler(msg.data)
        except Exception:  # a bug in the handler must not take the driver down
            logger.exception("%s: forwarded statement request failed", self._name)
            return  # no answer: the asking member reports an unknown outcome
        finally:
            self._running -= 1
            left = self._serving.pop(msg.src) - 1
            if left:
                self._serving[msg.src] = left
        result = ExecuteResult(
            self._id, msg.src, msg.request_id, ForwardStatus.OK, index, self._id, data
        )
        self._send([result])
