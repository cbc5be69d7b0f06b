"""The fault-injection campaign: real member daemons, workloads, a nemesis, a verdict.

Theory of operation
-------------------

:func:`run_campaign` performs one *run*:

1. when it can (root, iproute2), opens a network of namespaces (:mod:`._netns`), one per
   member;
2. starts N member daemons (:class:`~._daemons.DaemonCluster`: the kv example as a real
   daemon, :mod:`._kvdaemon`), bootstraps the first and joins the others with join tokens
   over their control sockets, and waits for the roles to settle;
3. runs the chosen workloads (:mod:`._workloads`, through each member's public HTTPS API:
   the kv endpoints and ``/core/internal/sql``; each worker is bound to one member, as
   Jepsen's clients are, so clients see killed, paused and cut-off members too) while
   :func:`~._nemesis.run_schedule` inflicts a seeded schedule through
   :class:`DaemonExecutor`;
4. after the schedule (every fault healed, every member started again, a removed one joined
   again), waits for a leader and performs each workload's final read, then kills the
   members;
5. checks each workload's operations with its checker and writes ``history.jsonl``,
   ``verdict.json`` and ``latency.png`` (:func:`~._report.write_report`) plus the members'
   logs, ``schedule.txt`` and ``members.json`` to the run's folder.

Partitions: with namespaces, a cut link is a real partition between the daemons, which dial
each other at their namespace addresses (the member table's); otherwise the links are
blocked in each daemon's Raft transport (its ``Faults``, driven through the trusted-only
``/1.0/campaign/faults`` endpoint of :mod:`._kvdaemon`). Either way the runner's clients still
reach every member (through the hub namespace), as in Jepsen, so a minority member keeps
answering and must refuse or delay what it cannot serve correctly. Delay and loss always
come from the transport's ``Faults`` (no netem on these machines).
"""

from __future__ import annotations

import json
import logging
import random
import secrets
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

import trio

from .._errors import MicrotrioError, NoLeaderError, UnavailableError, ValidationError
from .._replication import node_id_for
from ._daemons import DaemonCluster
from ._history import History, Outcome, Recorder
from ._nemesis import ALL_FAULTS, FaultKind, Link, generate_schedule, run_schedule
from ._netns import NetnsNetwork, netns_unavailable_reason, open_netns_network
from ._report import CheckResult, Validity, write_report
from ._workloads import WORKLOADS, CampaignClient, Workload, make_workload, perform_recorded

__all__ = ["CampaignConfig", "DaemonExecutor", "RunResult", "run_campaign"]

logger = logging.getLogger("microtrio.testing.campaign")

_FORM_TIMEOUT: Final = 120.0
_FINAL_TIMEOUT: Final = 60.0
_BACKOFF: Final = 0.2


@final
@dataclass(frozen=True, slots=True)
class CampaignConfig:
    """One run's parameters; ``seed=None`` draws one (it is printed and stored either way).

    ``network``: ``"auto"`` (namespaces when root, else the transport's fault layer),
    ``"netns"`` or ``"faults"``.
    """

    results: Path
    members: int = 3
    duration: float = 30.0
    workloads: tuple[str, ...] = tuple(WORKLOADS)
    faults: tuple[FaultKind, ...] = ALL_FAULTS
    seed: int | None = None
    fault_time: tuple[float, float] = (2.0, 5.0)
    quiet_time: tuple[float, float] = (1.0, 3.0)
    request_timeout: float = 5.0
    pace: float = 0.01  # seconds between one worker's operations
    plugin: Path | None = None  # kv handler replacements (test variants only)
    keep_state: bool = False
    network: str = "auto"
    heartbeat: float = 1.0

    def __post_init__(self) -> None:
        unknown = set(self.workloads) - set(WORKLOADS)
        if unknown or not self.workloads:
            raise ValidationError(f"workloads must be among {sorted(WORKLOADS)}: {unknown}")
        if self.members < 1:
            raise ValidationError("a campaign needs members")
        if self.network not in ("auto", "netns", "faults"):
            raise ValidationError("network is auto, netns or faults")


@final
@dataclass(frozen=True, slots=True)
class RunResult:
    folder: Path
    seed: int
    validity: Validity
    results: tuple[CheckResult, ...]
    history: History = field(repr=False)

    @property
    def crashes(self) -> list[dict[str, Any]]:
        """Members that exited by themselves during the run (each one's log tells why)."""
        found = self.history.meta.get("crashes", [])
        return list(found) if isinstance(found, list) else []

    @property
    def error(self) -> str:
        """Why the run ended early (empty if it did not): its verdict is then unknown
        unless a checker found an anomaly in the history so far."""
        return str(self.history.meta.get("error", ""))

    @property
    def network(self) -> str:
        return str(self.history.meta.get("network", ""))

    @property
    def valid(self) -> bool:
        return self.validity is Validity.VALID


@final
class DaemonExecutor:
    """The :class:`~._nemesis.NemesisExecutor` over member daemons (and namespaces)."""

    def __init__(self, cluster: DaemonCluster, client: CampaignClient) -> None:
        self.cluster = cluster
        self.client = client
        self.removed: set[str] = set()
        self._blocked: frozenset[Link] = frozenset()  # in the transports (no namespaces)
        self._delay = 0.0
        self._drop = 0.0

    def _reachable(self) -> list[str]:
        return [n for n, m in self.cluster.members.items() if m.running and not m.paused]

    async def leader(self) -> str | None:
        names = {node_id_for(n): n for n in self.cluster.members}
        votes: dict[str, int] = {}
        for name in self._reachable():
            if name in self.removed or not self.cluster[name].address:
                continue
            try:
                with trio.move_on_after(2):
                    status = await self.client.status(self.cluster[name].address)
                    if status["is_leader"]:
                        return name
                    leader = names.get(int(status["leader"]))
                    if leader is not None:
                        votes[leader] = votes.get(leader, 0) + 1
            except MicrotrioError:
                continue
        return max(votes, key=votes.__getitem__) if votes else None

    async def _push_faults(self) -> None:
        """Each reachable member's rules for the links it sends on (best effort: a member
        that is down has none when it starts again, and faults never overlap)."""
        names = list(self.cluster.members)
        failed: list[str] = []
        for src in self._reachable():
            links = []
            for dst in names:
                if dst == src:
                    continue
                blocked = (src, dst) in self._blocked
                if blocked or self._delay or self._drop:
                    links.append([src, dst, self._drop, self._delay, blocked])
            try:
                with trio.move_on_after(10):
                    await self.client.control(self.cluster[src].address, "faults", {"links": links})
                    continue
                failed.append(src)
            except MicrotrioError as exc:
                logger.info("campaign: fault rules for %s not set: %s", src, exc)
                failed.append(src)
        if failed:
            logger.warning("campaign: fault rules not set on %s", failed)

    async def partition(self, blocked: frozenset[Link]) -> None:
        if self.cluster.net is not None:
            await self.cluster.net.partition(blocked)
        else:
            self._blocked = blocked
            await self._push_faults()

    async def heal(self) -> None:
        if self.cluster.net is not None:
            await self.cluster.net.heal()
        if self._blocked or self._delay or self._drop:
            self._blocked, self._delay, self._drop = frozenset(), 0.0, 0.0
            await self._push_faults()

    async def degrade(self, *, delay: float, drop: float) -> None:
        self._delay, self._drop = delay, drop
        await self._push_faults()

    async def kill(self, member: str) -> None:
        await self.cluster.kill(member)

    async def start(self, member: str) -> None:
        await self.cluster.spawn(member)

    async def pause(self, member: str) -> None:
        await self.cluster.pause(member)

    async def resume(self, member: str) -> None:
        await self.cluster.resume(member)

    async def stop(self, member: str) -> None:
        await self.cluster.stop(member)

    async def remove(self, member: str) -> None:
        await self.cluster.remove(member)
        self.removed.add(member)

    async def rejoin(self, member: str) -> None:
        await self.cluster.rejoin(member)
        self.removed.discard(member)

    async def transfer_leadership(self, to: str) -> None:
        """To ``to`` if it votes; otherwise to the first other voter by name (a stand-by
        cannot lead: five members have two)."""
        leader = await self.leader()
        if leader is None:
            raise NoLeaderError("no leader to transfer leadership from")
        listed = await self.cluster.members_view()
        voters = sorted(str(m["name"]) for m in listed if str(m.get("role")) == "voter")
        if to not in voters:
            to = next((v for v in voters if v != leader), to)
        await self.client.control(self.cluster[leader].address, "transfer", {"to": to})


async def _wait_formed(ex: DaemonExecutor, within: float) -> str:
    """Wait until every member answers and one leads; the leader's name."""
    problems: dict[str, str] = {}
    with trio.move_on_after(within):
        while True:
            leader = await ex.leader()
            problems = {} if leader is not None else {"leader": "none known"}
            for name, m in ex.cluster.members.items():
                try:
                    with trio.move_on_after(5):
                        status = await ex.client.status(m.address)
                        if leader is not None and status["leader"] != node_id_for(leader):
                            problems[name] = f"follows {status['leader']}"
                        continue
                    problems[name] = "status timed out"
                except MicrotrioError as exc:
                    problems[name] = str(exc)
            if not problems and leader is not None:
                return leader
            await trio.sleep(0.3)
    raise NoLeaderError(f"the cluster did not form within {within} s: {problems}")


async def _retry(within: float, what: str, fn: Any, *args: Any) -> Any:
    with trio.move_on_after(within):
        while True:
            try:
                return await fn(*args)
            except MicrotrioError as exc:
                logger.info("campaign: %s: %s (retrying)", what, exc)
                await trio.sleep(0.3)
    raise UnavailableError(f"{what}: no success within {within} s")


class _Workers:
    """Process ids: a worker whose operation's outcome is unknown takes a fresh one."""

    def __init__(self) -> None:
        self._next = 0

    def new(self) -> int:
        self._next += 1
        return self._next


async def _worker(
    workload: Workload,
    ex: DaemonExecutor,
    recorder: Recorder,
    ids: _Workers,
    member: str,
    deadline: float,
    pace: float,
) -> None:
    """One client, bound to ``member`` for the whole run as Jepsen's clients are (also
    across new process ids after unknown outcomes)."""
    process = ids.new()
    while trio.current_time() < deadline:
        inv = workload.next()
        address = ex.cluster[member].address
        outcome = await perform_recorded(workload, ex.client, address, recorder, process, inv)
        if outcome is Outcome.UNKNOWN:
            process = ids.new()
        # a member that refuses (killed, no leader) is not asked again at full speed
        await trio.sleep(pace if outcome is Outcome.OK else _BACKOFF)


async def _final_reads(
    workloads: Sequence[Workload], ex: DaemonExecutor, recorder: Recorder, ids: _Workers
) -> None:
    """Each workload's last read, from the leader, retried until it succeeds."""
    for workload in workloads:
        inv = workload.final()
        if inv is None:
            continue
        with trio.move_on_after(_FINAL_TIMEOUT):
            while True:
                leader = await ex.leader()
                if leader is not None:
                    address = ex.cluster[leader].address
                    outcome = await perform_recorded(
                        workload, ex.client, address, recorder, ids.new(), inv
                    )
                    if outcome is Outcome.OK:
                        break
                await trio.sleep(0.3)


def _check(workloads: Sequence[Workload], history: History) -> list[CheckResult]:
    ops = history.operations()
    return [w.check([o for o in ops if w.owns(o)]) for w in workloads]


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


async def _network(config: CampaignConfig, names: list[str]) -> str:
    """``netns`` or ``faults``: what makes partitions in this run."""
    if config.network != "auto" or len(names) < 2:
        return config.network if config.network != "auto" else "faults"
    reason = await trio.to_thread.run_sync(netns_unavailable_reason)
    if reason is not None:
        logger.warning("campaign: partitions in the transport (%s)", reason)
        return "faults"
    return "netns"


async def run_campaign(config: CampaignConfig) -> RunResult:
    """One run (see the module docstring); the folder is ``results/run-<N>m-<seed>``."""
    seed = config.seed if config.seed is not None else secrets.randbelow(2**32)
    names = [f"member{i + 1}" for i in range(config.members)]
    folder = config.results / f"run-{config.members}m-{seed}"
    attempt = 1
    while folder.exists():  # the same seed again: a new folder, the old report stays
        attempt += 1
        folder = config.results / f"run-{config.members}m-{seed}-{attempt}"
    folder.mkdir(parents=True)
    network = await _network(config, names)
    logger.warning(
        "campaign: run seed=%d members=%d network=%s -> %s", seed, config.members, network, folder
    )
    recorder = Recorder(trio.current_time, meta={"seed": seed, "members": names,
                                                 "workloads": list(config.workloads),
                                                 "network": network})  # fmt: skip
    rng = random.Random(seed)
    workloads = [make_workload(n, random.Random(rng.getrandbits(64))) for n in config.workloads]
    error = ""
    try:
        async with AsyncExitStack() as stack:
            net = None
            if network == "netns":
                net = await stack.enter_async_context(open_netns_network(names))
            await _run(config, seed, names, folder, net, recorder, workloads)
    except* MicrotrioError as group:
        # The history so far is still checked and kept; the run cannot be called valid.
        error = "; ".join(f"{type(e).__name__}: {e}" for e in _leaves(group))
        logger.error("campaign: run seed=%d failed: %s", seed, error, exc_info=True)
        recorder.set_meta("error", error)
    history = recorder.history()
    results = _check(workloads, history)
    title = f"microtrio {config.members} members  seed {seed}  ({network})"
    await trio.to_thread.run_sync(lambda: write_report(folder, history, results, title=title))
    order = {Validity.VALID: 0, Validity.UNKNOWN: 1, Validity.INVALID: 2}
    validity = max((r.validity for r in results), key=order.__getitem__, default=Validity.VALID)
    if error and validity is Validity.VALID:
        validity = Validity.UNKNOWN
    logger.warning("campaign: run seed=%d: %s (%s)", seed, validity.value, folder)
    return RunResult(folder, seed, validity, tuple(results), history)


async def _run(
    config: CampaignConfig,
    seed: int,
    names: list[str],
    folder: Path,
    net: NetnsNetwork | None,
    recorder: Recorder,
    workloads: list[Workload],
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = DaemonCluster(
            folder, names, nursery=nursery, net=net, heartbeat=config.heartbeat,
            plugin=config.plugin, seed=seed,
        )  # fmt: skip
        client = CampaignClient(timeout=config.request_timeout, route=cluster.route)
        cluster.on_change(client.forget)
        ex = DaemonExecutor(cluster, client)
        try:
            await cluster.form(_FORM_TIMEOUT)
            leader = await _wait_formed(ex, _FORM_TIMEOUT)
            for w in workloads:
                await _retry(30, f"{w.name} setup", w.setup, client, cluster[leader].address)
            await _drive(config, seed, names, folder, ex, recorder, workloads)
        finally:
            with trio.CancelScope(shield=True):
                await cluster.aclose()
                await client.aclose()
            nursery.cancel_scope.cancel()


async def _drive(
    config: CampaignConfig,
    seed: int,
    names: list[str],
    folder: Path,
    ex: DaemonExecutor,
    recorder: Recorder,
    workloads: list[Workload],
) -> None:
    faults = [f for f in config.faults if len(names) > 1]
    t0 = trio.current_time()
    deadline = t0 + config.duration
    ids = _Workers()
    async with trio.open_nursery() as nursery:
        if faults:
            schedule = generate_schedule(
                names, seed=seed, duration=config.duration, faults=faults,
                fault_time=config.fault_time, quiet_time=config.quiet_time,
            )  # fmt: skip
            (folder / "schedule.txt").write_text(schedule.describe() + "\n", encoding="utf-8")
            await nursery.start(run_schedule, schedule, ex, recorder)
        for w in workloads:
            w.t0 = t0
            for i in range(w.workers):
                member = names[i % len(names)]
                nursery.start_soon(_worker, w, ex, recorder, ids, member, deadline, config.pace)
    # every fault is healed and every member running again: the last reads
    ex.cluster.check_crashes()
    await ex.heal()
    for name in names:
        await ex.cluster.resume(name)
        if name not in ex.removed:
            await _retry(60, f"start {name}", ex.cluster.spawn, name)
    for name in sorted(ex.removed):
        await _retry(60, f"rejoin {name}", ex.rejoin, name)
    await _wait_formed(ex, _FORM_TIMEOUT)
    await _final_reads(workloads, ex, recorder, ids)
    recorder.set_meta("crashes", ex.cluster.check_crashes())
    (folder / "members.json").write_text(
        json.dumps({n: m.address for n, m in ex.cluster.members.items()}) + "\n", "utf-8"
    )
