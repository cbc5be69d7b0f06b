"""The fault-injection campaign: real member processes, workloads, a nemesis, a verdict.

Theory of operation
-------------------

:func:`run_campaign` performs one *run*:

1. writes a PKI and opens a :mod:`._proxy` mesh (one TCP proxy per directed link);
2. starts N members as processes (:class:`~._processes.ProcessCluster`), each told to dial
   its peers through its proxies, and waits until they agree on a leader;
3. runs the chosen workloads (:mod:`._workloads`; each worker sends every request to a
   random member, so clients see every member, including killed, paused and cut-off ones)
   while :func:`~._nemesis.run_schedule` inflicts a seeded schedule through
   :class:`ProcessExecutor`;
4. after the schedule (every fault healed, every member started again), waits for a leader
   and performs each workload's final read, then stops the members;
5. checks each workload's operations with its checker and writes ``history.jsonl``,
   ``verdict.json`` and ``latency.png`` (:func:`~._report.write_report`) plus the members'
   logs and ``schedule.txt`` to the run's folder.

Partitions act on the Raft links only (the proxies): clients still reach every member, as
in Jepsen, so a minority member keeps answering and must refuse or delay what it cannot
serve correctly. Network namespaces (:mod:`._netns`) are not used: the runner's clients live
in the host namespace, which that network deliberately never touches; the proxies work for
root and non-root alike.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

import trio

from .._errors import MicrotrioError, NoLeaderError, UnavailableError, ValidationError
from .._replication import node_id_for
from ._history import History, Outcome, Recorder
from ._nemesis import ALL_FAULTS, FaultKind, Link, generate_schedule, run_schedule
from ._processes import CampaignPki, ProcessCluster
from ._proxy import ProxyMesh, open_proxy_mesh
from ._report import CheckResult, Validity, write_report
from ._workloads import WORKLOADS, CampaignClient, Workload, make_workload, perform_recorded

__all__ = ["CampaignConfig", "ProcessExecutor", "RunResult", "run_campaign"]

logger = logging.getLogger("microtrio.testing.campaign")

_FORM_TIMEOUT: Final = 60.0
_FINAL_TIMEOUT: Final = 60.0
_BACKOFF: Final = 0.2


@final
@dataclass(frozen=True, slots=True)
class CampaignConfig:
    """One run's parameters; ``seed=None`` draws one (it is printed and stored either way)."""

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

    def __post_init__(self) -> None:
        unknown = set(self.workloads) - set(WORKLOADS)
        if unknown or not self.workloads:
            raise ValidationError(f"workloads must be among {sorted(WORKLOADS)}: {unknown}")
        if self.members < 1:
            raise ValidationError("a campaign needs members")


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
    def valid(self) -> bool:
        return self.validity is Validity.VALID


@final
class ProcessExecutor:
    """The :class:`~._nemesis.NemesisExecutor` over member processes and proxies."""

    def __init__(self, cluster: ProcessCluster, mesh: ProxyMesh | None, client: CampaignClient):
        self.cluster = cluster
        self.mesh = mesh
        self.client = client
        self.removed: set[str] = set()

    def _reachable(self) -> list[str]:
        return [n for n, m in self.cluster.members.items() if m.running and not m.paused]

    async def leader(self) -> str | None:
        names = {node_id_for(n): n for n in self.cluster.members}
        votes: dict[str, int] = {}
        for name in self._reachable():
            try:
                with trio.move_on_after(2):
                    status = await self.client.status(self.cluster[name].address)
                    if status["is_leader"] and name not in self.removed:
                        return name
                    leader = names.get(int(status["leader"]))
                    if leader is not None:
                        votes[leader] = votes.get(leader, 0) + 1
            except MicrotrioError:
                continue
        return max(votes, key=votes.__getitem__) if votes else None

    async def _on_leader(self, action: str, body: dict[str, Any]) -> None:
        leader = await self.leader()
        if leader is None:
            raise NoLeaderError(f"no leader for {action}")
        await self.client.control(self.cluster[leader].address, action, body)

    async def partition(self, blocked: frozenset[Link]) -> None:
        if self.mesh is None:
            raise UnavailableError("no proxies: partitions are not available")
        await self.mesh.partition(blocked)

    async def heal(self) -> None:
        if self.mesh is not None:
            await self.mesh.heal()

    async def kill(self, member: str) -> None:
        await self.cluster.kill(member)

    async def start(self, member: str) -> None:
        await self.cluster.start(member)

    async def pause(self, member: str) -> None:
        await self.cluster.pause(member)

    async def resume(self, member: str) -> None:
        await self.cluster.resume(member)

    async def stop(self, member: str) -> None:
        await self.cluster.stop(member)

    async def remove(self, member: str) -> None:
        await self._on_leader("remove", {"name": member})
        self.removed.add(member)

    async def rejoin(self, member: str) -> None:
        for name in self._reachable():
            if name != member:
                peers = {member: self._peer_address(name, member)}
                await self.client.control(self.cluster[name].address, "peers", {"peers": peers})
        leader = await self.leader()
        if leader is None:
            raise NoLeaderError(f"no leader to add {member} back")
        body = {"name": member, "address": self._peer_address(leader, member)}
        await self.client.control(self.cluster[leader].address, "add", body)
        self.removed.discard(member)

    async def transfer_leadership(self, to: str) -> None:
        await self._on_leader("transfer", {"to": to})

    def _peer_address(self, src: str, dst: str) -> str:
        if self.mesh is None:
            return self.cluster[dst].address
        host, port = self.mesh.address(src, dst)
        return f"{host}:{port}"


async def _wait_formed(ex: ProcessExecutor, within: float) -> str:
    """Wait until every member answers and one leads; the leader's name."""
    with trio.move_on_after(within):
        while True:
            leader = await ex.leader()
            if leader is not None:
                try:
                    for name in ex.cluster.members:
                        await ex.client.status(ex.cluster[name].address)
                    return leader
                except MicrotrioError:
                    pass
            await trio.sleep(0.2)
    raise NoLeaderError(f"the cluster did not form within {within} s")


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
    ex: ProcessExecutor,
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
    workloads: Sequence[Workload], ex: ProcessExecutor, recorder: Recorder, ids: _Workers
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


async def run_campaign(config: CampaignConfig) -> RunResult:
    """One run (see the module docstring); the folder is ``results/<time>-<seed>``."""
    seed = config.seed if config.seed is not None else secrets.randbelow(2**32)
    names = [f"member{i + 1}" for i in range(config.members)]
    folder = config.results / f"run-{config.members}m-{seed}"
    attempt = 1
    while folder.exists():  # the same seed again: a new folder, the old report stays
        attempt += 1
        folder = config.results / f"run-{config.members}m-{seed}-{attempt}"
    folder.mkdir(parents=True)
    logger.warning("campaign: run seed=%d members=%d -> %s", seed, config.members, folder)
    pki = await trio.to_thread.run_sync(CampaignPki.create, folder / "pki", names)
    recorder = Recorder(trio.current_time, meta={"seed": seed, "members": names,
                                                 "workloads": list(config.workloads)})  # fmt: skip
    rng = random.Random(seed)
    workloads = [make_workload(n, random.Random(rng.getrandbits(64))) for n in config.workloads]
    placeholder = {n: ("127.0.0.1", 9) for n in names}
    mesh_cm = open_proxy_mesh(placeholder, seed=seed) if len(names) > 1 else None
    client = CampaignClient(pki.client_context(), timeout=config.request_timeout)
    try:
        if mesh_cm is None:
            await _run(config, seed, names, folder, pki, None, client, recorder, workloads)
        else:
            async with mesh_cm as mesh:
                await _run(config, seed, names, folder, pki, mesh, client, recorder, workloads)
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
    history = recorder.history()
    results = _check(workloads, history)
    title = f"microtrio {config.members} members  seed {seed}"
    await trio.to_thread.run_sync(lambda: write_report(folder, history, results, title=title))
    order = {Validity.VALID: 0, Validity.UNKNOWN: 1, Validity.INVALID: 2}
    validity = max((r.validity for r in results), key=order.__getitem__, default=Validity.VALID)
    logger.warning("campaign: run seed=%d: %s (%s)", seed, validity.value, folder)
    return RunResult(folder, seed, validity, tuple(results), history)


async def _run(
    config: CampaignConfig,
    seed: int,
    names: list[str],
    folder: Path,
    pki: CampaignPki,
    mesh: ProxyMesh | None,
    client: CampaignClient,
    recorder: Recorder,
    workloads: list[Workload],
) -> None:
    def peer_address(src: str, dst: str) -> str:
        if mesh is None:
            return "127.0.0.1:9"
        host, port = mesh.address(src, dst)
        return f"{host}:{port}"

    def on_address(name: str, address: str) -> None:
        if mesh is not None:
            host, port = address.rsplit(":", 1)
            for src in names:
                if src != name:
                    mesh.link(src, name).target = (host, int(port))

    async with trio.open_nursery() as nursery:
        cluster = ProcessCluster(
            folder, names, pki, nursery=nursery, peer_address=peer_address,
            plugin=config.plugin, on_address=on_address,
        )  # fmt: skip
        ex = ProcessExecutor(cluster, mesh, client)
        try:
            async with trio.open_nursery() as starting:  # founders wait for each other
                for name in names:
                    starting.start_soon(cluster.start, name)
            leader = await _wait_formed(ex, _FORM_TIMEOUT)
            for w in workloads:
                await _retry(30, f"{w.name} setup", w.setup, client, cluster[leader].address)
            await _drive(config, seed, names, folder, ex, recorder, workloads)
        finally:
            await cluster.aclose()


async def _drive(
    config: CampaignConfig,
    seed: int,
    names: list[str],
    folder: Path,
    ex: ProcessExecutor,
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
    for name in names:
        await ex.cluster.resume(name)
        await ex.cluster.start(name)
    if ex.removed:
        for name in sorted(ex.removed):
            await _retry(30, f"rejoin {name}", ex.rejoin, name)
    await _wait_formed(ex, _FORM_TIMEOUT)
    await _final_reads(workloads, ex, recorder, ids)
    recorder.set_meta("crashes", ex.cluster.check_crashes())
    (folder / "members.json").write_text(
        json.dumps({n: m.address for n, m in ex.cluster.members.items()}) + "\n", "utf-8"
    )
