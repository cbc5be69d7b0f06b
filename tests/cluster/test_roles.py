"""The role planner (issue 5, automatic roles) and the removal safeguards."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from microtrio._cluster._roles import (
    RoleChange,
    RoleTargets,
    keeps_quorum,
    plan_removal,
    plan_role_change,
)
from microtrio._errors import BadRequestError
from microtrio.raft import Role

V, S, P = Role.VOTER, Role.STANDBY, Role.SPARE


def conf_of(text: str) -> dict[int, Role]:
    """'VVSP' -> {1: voter, 2: voter, 3: stand-by, 4: spare}."""
    return {i + 1: {"V": V, "S": S, "P": P}[c] for i, c in enumerate(text)}


def converge(
    conf: Mapping[int, Role], online: set[int], leader: int, limit: int = 30
) -> tuple[dict[int, Role], list[RoleChange]]:
    """Apply the planner until it has nothing to do, checking invariants at every step."""
    current = dict(conf)
    changes: list[RoleChange] = []
    for _ in range(limit):
        change = plan_role_change(current, online=online, leader=leader)
        if change is None:
            return current, changes
        assert current[change.node_id] is not change.role
        assert change.node_id != leader or change.role is V
        current[change.node_id] = change.role
        changes.append(change)
        assert keeps_quorum(current, online | {leader}), (current, change)
        assert current[leader] is V
    raise AssertionError(f"no convergence: {changes}")


@pytest.mark.parametrize(
    ("n", "voters", "standbys"),
    [(1, 1, 0), (2, 1, 1), (3, 3, 0), (4, 3, 1), (5, 3, 2), (6, 3, 2), (7, 5, 2), (8, 5, 2),
     (9, 5, 2)],
)
def test_targets_all_online_from_fresh_joiners(n: int, voters: int, standbys: int) -> None:
    # the founder is the only voter; every joiner arrives as a stand-by (non-voter)
    conf = conf_of("V" + "S" * (n - 1))
    final, changes = converge(conf, set(conf), leader=1)
    assert sum(r is V for r in final.values()) == voters
    assert sum(r is S for r in final.values()) == standbys
    assert sum(r is P for r in final.values()) == n - voters - standbys
    assert len(changes) <= n  # no churn


@pytest.mark.parametrize("n", range(1, 10))
def test_targets_are_odd_and_bounded(n: int) -> None:
    t = RoleTargets()
    assert t.voters_for(n) % 2 == 1
    assert 1 <= t.voters_for(n) <= n
    assert t.voters_for(n) + t.standbys_for(n) <= n


# (configuration, offline members, leader, expected change or None)
CASES: list[tuple[str, set[int], int, tuple[int, Role] | None]] = [
    ("V", set(), 1, None),
    ("VS", set(), 1, None),  # 2 members: one voter, one stand-by
    ("VV", set(), 1, (2, S)),  # even voters: demote the non-leader
    ("VV", {2}, 1, (2, S)),  # ... the offline one
    ("VV", set(), 2, (1, S)),  # never the leader
    ("VSS", set(), 1, (2, V)),  # below target
    ("VVS", set(), 1, (3, V)),
    ("VVV", set(), 1, None),
    ("VVV", {3}, 1, None),  # nobody to promote: keep three voters, one down
    ("VVVS", {3}, 1, (4, V)),  # a voter offline: promote the online stand-by ...
    ("VVVV", {3}, 1, (3, S)),  # ... then demote the offline voter
    ("VVVS", {4}, 1, None),  # an offline stand-by with no spare to swap in
    ("VVVSP", {4}, 1, (5, S)),  # room for both stand-bys: the online spare goes first
    ("VVVSSP", {4}, 1, (6, S)),  # swap an offline stand-by: the online spare first ...
    ("VVVSSS", {4}, 1, (4, P)),  # ... then the offline stand-by becomes a spare
    ("VVVPS", {4}, 1, None),  # an offline spare stays spare
    ("VVVSSS", set(), 1, (6, P)),  # too many stand-bys
    ("VVVVV", set(), 1, (5, S)),  # 5 voters in a 5-member cluster: target 3
    ("VVVVVSS", set(), 1, None),  # 7 members: target 5 reached, 2 stand-bys
    ("VVVSSSS", set(), 1, (4, V)),  # 7 members: grow to 5 voters
    ("VVVVVVV", set(), 1, (7, S)),  # 7 voters: demote to 5
    ("VVVVVVV", {5}, 1, (5, S)),  # prefer the offline voter
    ("VVP", set(), 1, (3, S)),  # even voters and an online spare: grow, do not shrink
    ("VVP", {3}, 1, (2, S)),  # the spare is offline: shrink to one voter
    ("VVVSS", {2, 3}, 1, None),  # no quorum of online voters: change nothing risky
    ("VSP", {2}, 1, (3, S)),  # the stand-by is down: the online spare becomes one
    ("VVV", set(), 2, None),
]


@pytest.mark.parametrize(("text", "offline", "leader", "expected"), CASES)
def test_plan_table(
    text: str, offline: set[int], leader: int, expected: tuple[int, Role] | None
) -> None:
    conf = conf_of(text)
    online = set(conf) - offline
    change = plan_role_change(conf, online=online, leader=leader)
    got = None if change is None else (change.node_id, change.role)
    assert got == expected


def test_standby_not_caught_up_is_not_promoted() -> None:
    conf = conf_of("VSS")
    change = plan_role_change(conf, online=set(conf), leader=1, caught_up={3})
    assert change is not None and (change.node_id, change.role) == (3, V)
    assert plan_role_change(conf, online=set(conf), leader=1, caught_up=set()) is None


def test_unknown_leader_plans_nothing() -> None:
    assert plan_role_change(conf_of("VS"), online={1, 2}, leader=9) is None


def test_random_failures_converge_safely() -> None:
    rng = random.Random(5)
    for _ in range(300):
        n = rng.randint(1, 9)
        conf = {i + 1: rng.choice([V, S, P]) for i in range(n)}
        leader = rng.randint(1, n)
        conf[leader] = V
        online = {i for i in conf if rng.random() < 0.7} | {leader}
        if not keeps_quorum(conf, online):
            continue
        final, _ = converge(conf, online, leader)
        voters = [i for i, r in final.items() if r is V]
        assert leader in voters
        if set(final) <= online:  # everyone online: exactly on target
            assert len(voters) == RoleTargets().voters_for(n)
            standbys = sum(r is S for r in final.values())
            assert standbys == RoleTargets().standbys_for(n)


# -- removal safeguards ------------------------------------------------------------------


def test_remove_last_member_refused() -> None:
    with pytest.raises(BadRequestError, match="last"):
        plan_removal(conf_of("V"), 1, leader=1, online={1})
    with pytest.raises(BadRequestError, match="last cluster member"):
        plan_removal({}, 1, leader=1, online={1}, members=1)


def test_two_members_remove_the_leader_promotes_and_transfers() -> None:
    plan = plan_removal(conf_of("VS"), 1, leader=1, online={1, 2})
    assert (plan.in_raft, plan.promote, plan.transfer_to) == (True, 2, 2)


def test_two_members_remove_the_standby_is_direct() -> None:
    plan = plan_removal(conf_of("VS"), 2, leader=1, online={1})
    assert (plan.in_raft, plan.promote, plan.transfer_to) == (True, None, None)


def test_two_voters_remove_offline_one() -> None:
    plan = plan_removal(conf_of("VV"), 2, leader=1, online={1})
    assert (plan.promote, plan.transfer_to) == (None, None)


def test_last_voter_with_only_offline_candidates_refused() -> None:
    with pytest.raises(BadRequestError, match="last voter"):
        plan_removal(conf_of("VS"), 1, leader=1, online={1})


def test_remove_leader_transfers_to_online_voter() -> None:
    plan = plan_removal(conf_of("VVVVV"), 1, leader=1, online={1, 3, 4, 5})
    assert plan.transfer_to == 3 and plan.promote is None
    with pytest.raises(BadRequestError, match="quorum"):
        plan_removal(conf_of("VVV"), 1, leader=1, online={1, 3})


def test_remove_that_breaks_quorum_refused() -> None:
    # 5 voters, 2 offline: removing an online one leaves 2 of 4 online
    with pytest.raises(BadRequestError, match="quorum"):
        plan_removal(conf_of("VVVVV"), 2, leader=1, online={1, 2, 3})


def test_pending_member_not_in_raft() -> None:
    plan = plan_removal(conf_of("VVV"), 42, leader=1, online={1, 2, 3}, members=4)
    assert not plan.in_raft
