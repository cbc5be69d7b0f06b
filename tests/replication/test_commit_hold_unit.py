"""The commit hold on its own (no I/O): which notifications are held, which later messages
supersede them, what leaves ahead of an answer that makes a follower wait for its apply,
and a deadline that is never in the past; the leader's record of followers that wait for
a write they forwarded; the configuration knob."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from microtrio._replication import DriverConfig
from microtrio._replication._commit_hold import CommitHold, split_commit_only
from microtrio._replication._forwarding import Forwarding
from microtrio._replication._wire import ExecuteResult, ForwardPropose, ForwardStatus
from microtrio.raft import Entry, EntryType, MsgApp, MsgHeartbeat, MsgReadIndexResp


def _commit(dst: int, commit: int, *, term: int = 2, prev: int | None = None) -> MsgApp:
    prev = commit if prev is None else prev
    return MsgApp(1, dst, term, prev, term, (), commit, False)


def _append(dst: int, prev: int, commit: int, count: int = 1, term: int = 2) -> MsgApp:
    entries = tuple(Entry(term, prev + k, EntryType.NORMAL, b"x") for k in range(1, count + 1))
    return MsgApp(1, dst, term, prev, term, entries, commit)


def _never(node_id: int, commit: int) -> bool:
    return False


def test_split_keeps_everything_but_commit_notifications_in_order() -> None:
    probe = MsgApp(1, 2, 2, 5, 2, (), 5, True)  # wants an answer: not a notification
    msgs = [_append(2, 5, 4), _commit(3, 5), probe, MsgHeartbeat(1, 3, 2, 5)]
    now, late = split_commit_only(msgs)
    assert now == [msgs[0], probe, msgs[3]]
    assert late == [msgs[1]]


def test_held_until_the_oldest_deadline_then_all_leave() -> None:
    hold = CommitHold(0.005)
    assert len(hold) == 0 and hold.deadline == math.inf
    assert hold.hold([_commit(2, 5)], (), _never, now=10.0) == []
    assert hold.deadline == 10.005
    hold.hold([_commit(2, 6), _commit(3, 6)], (), _never, now=10.004)
    assert len(hold) == 2 and hold.deadline == 10.005  # the oldest one's, not renewed
    assert sorted(m.dst for m in hold.take_all()) == [2, 3]
    assert len(hold) == 0 and hold.deadline == math.inf


def test_the_latest_notification_per_follower_is_kept() -> None:
    hold = CommitHold(1.0)
    hold.hold([_commit(2, 5)], (), _never, now=0.0)
    hold.hold([_commit(2, 7)], (), _never, now=0.1)
    hold.hold([_commit(2, 6)], (), _never, now=0.2)  # older than the one held: ignored
    (held,) = hold.take_all()
    assert held.commit == 7


def test_a_later_append_that_tells_as_much_supersedes() -> None:
    hold = CommitHold(1.0)
    hold.hold([_commit(2, 7), _commit(3, 7)], (), _never, now=0.0)
    out = hold.sending([_append(2, 7, 7)])  # the next write's append carries commit 7
    assert list(out) == [_append(2, 7, 7)]
    assert [m.dst for m in hold.take_all()] == [3]


def test_an_append_that_tells_less_does_not_supersede() -> None:
    hold = CommitHold(1.0)
    hold.hold([_commit(2, 7)], (), _never, now=0.0)
    # a re-sent older append: its follower commits min(commit, last new index) = 5 only
    hold.sending([_append(2, 3, 7, count=2)])
    assert len(hold) == 1
    hold.sending([_append(2, 7, 6)])  # an older commit index (cannot happen; still safe)
    assert len(hold) == 1
    hold.sending([MsgApp(1, 2, 2, 7, 2, (), 7, True)])  # an empty append that wants an ack
    assert len(hold) == 0 and hold.deadline == math.inf


def test_held_notifications_go_ahead_of_answers_that_wait_for_the_apply() -> None:
    hold = CommitHold(1.0)
    hold.hold([_commit(2, 7), _commit(3, 7), _commit(4, 7)], (), _never, now=0.0)
    read = MsgReadIndexResp(1, 2, 0, 7, b"ctx")
    answer = ExecuteResult(1, 3, 99, ForwardStatus.OK, 7, 1, b"r")
    beat = MsgHeartbeat(1, 4, 2, 7)
    out = list(hold.sending([beat, read, answer]))
    assert out == [beat, _commit(2, 7), read, _commit(3, 7), answer]
    assert [m.dst for m in hold.take_all()] == [4]


def test_followers_that_wait_or_read_are_told_at_once() -> None:
    hold = CommitHold(1.0)
    asked: list[tuple[int, int]] = []

    def waits(node_id: int, commit: int) -> bool:
        asked.append((node_id, commit))
        return node_id == 3

    read = MsgReadIndexResp(1, 4, 0, 7, b"ctx")
    prompt = hold.hold([_commit(2, 7), _commit(3, 7), _commit(4, 7)], [read], waits, now=0.0)
    assert [m.dst for m in prompt] == [3, 4]
    assert [m.dst for m in hold.take_all()] == [2]
    assert (3, 7) in asked


def test_only_commit_notifications_can_be_held() -> None:
    with pytest.raises(ValueError, match="commit-only"):
        CommitHold(1.0).hold([_append(2, 5, 5)], (), _never, now=0.0)


@pytest.mark.parametrize("delay", [0.0, -1.0, math.inf, math.nan])
def test_a_hold_needs_a_positive_finite_delay(delay: float) -> None:
    with pytest.raises(ValueError, match="delay"):
        CommitHold(delay)


@pytest.mark.parametrize("delay", [-0.001, math.inf, math.nan])
def test_the_config_refuses_a_bad_delay(delay: float) -> None:
    with pytest.raises(ValueError, match="commit_notify_delay"):
        DriverConfig(commit_notify_delay=delay)


def test_the_config_default_holds_a_few_milliseconds() -> None:
    assert 0 < DriverConfig().commit_notify_delay <= 0.01
    assert DriverConfig(commit_notify_delay=0).commit_notify_delay == 0


class _Transport:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, messages: Any) -> None:
        self.sent.extend(messages)


class _Leader:
    """What Forwarding asks of the node for a forwarded write."""

    term = 2

    def __init__(self) -> None:
        self.next = 10

    def propose(self, data: bytes) -> int:
        self.next += 1
        return self.next


def test_a_follower_that_forwarded_a_write_waits_until_told_its_index() -> None:
    transport = _Transport()
    fwd = Forwarding(
        1,
        transport=transport,  # type: ignore[arg-type]
        rng=random.Random(1),
        remote_limit=4,
        name="m1",
    )
    node: Any = _Leader()
    assert not fwd.waits_for_commit(2, 10)
    fwd.handle(node, ForwardPropose(2, 1, 7, b"w"))  # proposed at 11
    fwd.handle(node, ForwardPropose(2, 1, 8, b"w"))  # and at 12
    assert [m.index for m in transport.sent] == [11, 12]
    assert fwd.waits_for_commit(2, 11)  # not there yet: told at once, still waits
    assert not fwd.waits_for_commit(3, 12)  # another follower does not
    assert fwd.waits_for_commit(2, 12)  # this one tells it: sent at once, and then
    assert not fwd.waits_for_commit(2, 13)  # nothing more to wait for
    fwd.handle(node, ForwardPropose(2, 1, 9, b"w"))
    fwd.leader_changed(3)  # whoever leads next tells it
    assert not fwd.waits_for_commit(2, 13)
