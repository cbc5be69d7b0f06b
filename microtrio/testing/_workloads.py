"""Workloads of the fault-injection campaign, through the cluster's public HTTP API.

Theory of operation
-------------------

A :class:`CampaignClient` talks mutual TLS to one member per request (``httpx`` over trio).
Its errors are sorted at the seam, which is what the history needs to know:

* the request certainly did not happen: the connection could not be opened
  (:class:`~microtrio.UnavailableError`), or the member answered a 4xx
  (:class:`~microtrio._errors.RemoteError` with that status);
* the outcome is unknown: a timeout or a lost connection after the request may have left
  (:class:`~microtrio.OutcomeUnknownError`), or a 5xx answer (the member could not tell).

Each workload turns a random choice into an invocation, performs it, and records ``ok``,
``fail`` (definitely not done; a compare-and-set whose comparison did not hold is a ``fail``
with ``cas-mismatch``) or ``info`` (unknown; a read that failed in any way is a ``fail``,
since a read changes nothing). Workloads, each with its own keys in one shared history:

* ``register``: read (``GET /1.0/kv/{key}``), write (``PUT``), compare-and-set (one SQL
  request: ``UPDATE kv ... WHERE value = old``, ``rows_affected`` tells); keys are
  replaced by fresh ones every few seconds so that each key's history stays small enough
  for the linearizability search.
* ``bank``: transfers (one SQL request, two guarded ``UPDATE``s; an insufficient balance is
  a ``fail``) and reads of every balance.
* ``set``: adds (``PUT /1.0/kv/s-{n}``) and reads (SQL of every ``s-`` key), with a final read.
* ``append``: Elle list-append transactions of one to three micro-operations as one SQL
  request (``INSERT`` to append, ``SELECT ... ORDER BY rowid`` to read).
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, final

import httpx
import trio

from .._errors import MicrotrioError, OutcomeUnknownError, RemoteError, UnavailableError
from ._checkers import check_append, check_bank, check_register, check_set
from ._history import CAS_MISMATCH, JSON, Op, Outcome, Recorder
from ._report import CheckResult

__all__ = ["WORKLOADS", "CampaignClient", "Workload", "make_workload"]

#: What :class:`CampaignClient` needs to reach a member: the SSL context, and a Unix socket
#: path (or None for a direct TCP connection).
Route = tuple[ssl.SSLContext, str | None]

BANK_ACCOUNTS: Final = tuple(f"a{i}" for i in range(5))
BANK_INITIAL: Final = 20


def _q(text: str) -> str:
    """An SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


@final
class _Body(httpx.AsyncByteStream):
    """A request body sent as one chunk. httpx's own is an async generator, which a request
    cut short by a timeout leaves to the garbage collector (and trio then warns)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._sent = False

    def __aiter__(self) -> _Body:
        self._sent = False
        return self

    async def __anext__(self) -> bytes:
        if self._sent or not self._data:
            raise StopAsyncIteration
        self._sent = True
        return self._data


@final
class CampaignClient:
    """Requests to members over mutual TLS; errors sorted as the module docstring says."""

    def __init__(
        self,
        context: ssl.SSLContext | None = None,
        *,
        timeout: float,
        route: Callable[[str], Route] | None = None,
    ) -> None:
        """One context for every member, or ``route(address)``: the context to present to
        that member (a daemon trusts its own ``server.crt``) and the Unix socket that
        reaches it, if any (a member in a network namespace)."""
        if (context is None) == (route is None):
            raise ValueError("give a context or a route")
        self._timeout = timeout
        self._route = route
        self._default = (
            None if context is None else httpx.AsyncClient(verify=context, timeout=timeout)
        )
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._closing: list[httpx.AsyncClient] = []

    def _client(self, address: str) -> httpx.AsyncClient:
        if self._default is not None:
            return self._default
        client = self._clients.get(address)
        if client is None:
            assert self._route is not None
            context, uds = self._route(address)
            transport = httpx.AsyncHTTPTransport(verify=context, uds=uds)
            client = httpx.AsyncClient(transport=transport, timeout=self._timeout)
            self._clients[address] = client
        return client

    def forget(self, address: str) -> None:
        """Build the member's client again on the next request (new certificate)."""
        client = self._clients.pop(address, None)
        if client is not None:
            self._closing.append(client)

    async def aclose(self) -> None:
        clients = [*self._clients.values(), *self._closing]
        if self._default is not None:
            clients.append(self._default)
        self._clients.clear()
        self._closing.clear()
        for client in clients:
            await client.aclose()

    async def request(
        self,
        method: str,
        address: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        url = f"https://{address}{path}"
        http = self._client(address)
        request = http.build_request(method, url, json=json, content=content)
        if content is not None or json is not None:
            request.stream = _Body(request.content)
        try:
            resp = await http.send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise UnavailableError(f"cannot connect to {address}: {exc!r}") from exc
        except (httpx.HTTPError, OSError) as exc:
            raise OutcomeUnknownError(f"{method} {url}: {exc!r}") from exc
        if resp.status_code >= 400 and resp.status_code != 404:
            try:
                message = str(resp.json().get("error", resp.text))
            except ValueError:
                message = resp.text
            raise RemoteError(f"{resp.status_code}: {message}", resp.status_code)
        return resp

    async def sql(self, address: str, query: str) -> list[dict[str, Any]]:
        resp = await self.request("POST", address, "/core/internal/sql", json={"query": query})
        results: list[dict[str, Any]] = resp.json()["metadata"]["Results"]
        return results

    async def put(self, address: str, key: str, value: bytes) -> None:
        await self.request("PUT", address, f"/1.0/kv/{key}", content=value)

    async def get(self, address: str, key: str) -> bytes | None:
        resp = await self.request("GET", address, f"/1.0/kv/{key}")
        return None if resp.status_code == 404 else resp.content

    async def status(self, address: str) -> dict[str, Any]:
        resp = await self.request("GET", address, "/1.0/campaign/status")
        result: dict[str, Any] = resp.json()["metadata"]
        return result

    async def control(self, address: str, action: str, body: dict[str, Any]) -> None:
        await self.request("POST", address, f"/1.0/campaign/{action}", json=body)


def is_definite(exc: MicrotrioError) -> bool:
    """Whether the request certainly had no effect."""
    if isinstance(exc, RemoteError):
        return exc.status < 500
    return isinstance(exc, UnavailableError) and not isinstance(exc, OutcomeUnknownError)


class _Mismatch(Exception):
    """A compare-and-set whose comparison did not hold, or a refused transfer."""


@dataclass(frozen=True, slots=True)
class Invocation:
    f: str
    key: JSON
    value: JSON


class Workload:
    """One workload: its invocations, how each is performed, and its checker."""

    name = ""
    workers = 2

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.t0 = 0.0

    def owns(self, op: Op) -> bool:
        return isinstance(op.key, str) and op.key.startswith(f"{self.name}:")

    async def setup(self, client: CampaignClient, address: str) -> None:
        """Before the run (retried by the runner until it succeeds)."""

    def next(self) -> Invocation:
        raise NotImplementedError

    async def perform(self, client: CampaignClient, address: str, inv: Invocation) -> JSON:
        """The ``ok`` value; raises :class:`_Mismatch` or a ``MicrotrioError``."""
        raise NotImplementedError

    def final(self) -> Invocation | None:
        """A last read after the run, if the checker needs one."""
        return None

    def check(self, ops: Sequence[Op]) -> CheckResult:
        raise NotImplementedError


class RegisterWorkload(Workload):
    name = "register"
    workers = 6
    key_period = 4.0
    keys_at_once = 2

    def next(self) -> Invocation:
        generation = int((trio.current_time() - self.t0) / self.key_period)
        key = f"register:{generation}-{self.rng.randrange(self.keys_at_once)}"
        r = self.rng.random()
        if r < 0.5:
            return Invocation("read", key, None)
        if r < 0.75:
            return Invocation("write", key, self.rng.randrange(5))
        return Invocation("cas", key, [self.rng.randrange(5), self.rng.randrange(5)])

    async def perform(self, client: CampaignClient, address: str, inv: Invocation) -> JSON:
        key = str(inv.key).replace(":", "-")
        if inv.f == "read":
            raw = await client.get(address, key)
            return None if raw is None else int(raw)
        if inv.f == "write":
            await client.put(address, key, str(inv.value).encode())
            return inv.value
        old, new = inv.value
        query = (f"UPDATE kv SET value = CAST({_q(str(new))} AS BLOB) WHERE key = {_q(key)} "
                 f"AND value = CAST({_q(str(old))} AS BLOB)")  # fmt: skip
        (result,) = await client.sql(address, query)
        if result["rows_affected"] != 1:
            raise _Mismatch(CAS_MISMATCH)
        return inv.value

    def check(self, ops: Sequence[Op]) -> CheckResult:
        return check_register(ops)


class BankWorkload(Workload):
    name = "bank"

    async def setup(self, client: CampaignClient, address: str) -> None:
        rows = ", ".join(f"({_q(a)}, {BANK_INITIAL})" for a in BANK_ACCOUNTS)
        await client.sql(address, f"INSERT OR IGNORE INTO bank (account, balance) VALUES {rows}")

    def next(self) -> Invocation:
        if self.rng.random() < 0.4:
            return Invocation("read", "bank:all", None)
        src, dst = self.rng.sample(BANK_ACCOUNTS, 2)
        return Invocation(
            "transfer", "bank:all", {"from": src, "to": dst, "amount": self.rng.randint(1, 5)}
        )

    async def perform(self, client: CampaignClient, address: str, inv: Invocation) -> JSON:
        if inv.f == "read":
            (result,) = await client.sql(address, "SELECT account, balance FROM bank")
            return {str(a): int(b) for a, b in result["rows"]}
        t = inv.value
        amount = int(t["amount"])
        query = (
            f"UPDATE bank SET balance = balance - {amount} "
            f"WHERE account = {_q(t['from'])} AND balance >= {amount}; "
            f"UPDATE bank SET balance = balance + {amount} "
            f"WHERE account = {_q(t['to'])} AND changes() = 1"
        )
        first, second = await client.sql(address, query)
        if first["rows_affected"] != 1:
            raise _Mismatch("insufficient-balance")
        if second["rows_affected"] != 1:  # the guard held in one statement but not the next
            raise MicrotrioError(f"transfer half-applied: {first} {second}")
        return inv.value

    def final(self) -> Invocation:
        return Invocation("read", "bank:all", None)

    def check(self, ops: Sequence[Op]) -> CheckResult:
        return check_bank(
            ops,
            accounts=BANK_ACCOUNTS,
            total=BANK_INITIAL * len(BANK_ACCOUNTS),
            initial=dict.fromkeys(BANK_ACCOUNTS, BANK_INITIAL),
        )


class SetWorkload(Workload):
    name = "set"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._next = 0

    def next(self) -> Invocation:
        if self.rng.random() < 0.1:
            return Invocation("read", "set:all", None)
        self._next += 1
        return Invocation("add", "set:all", self._next)

    async def perform(self, client: CampaignClient, address: str, inv: Invocation) -> JSON:
        if inv.f == "add":
            await client.put(address, f"s-{inv.value}", b"1")
            return inv.value
        (result,) = await client.sql(address, "SELECT key FROM kv WHERE key LIKE 's-%'")
        return sorted(int(str(k)[2:]) for (k,) in result["rows"])

    def final(self) -> Invocation:
        return Invocation("read", "set:all", None)

    def check(self, ops: Sequence[Op]) -> CheckResult:
        return check_set(ops)


class AppendWorkload(Workload):
    name = "append"
    key_period = 6.0
    keys_at_once = 4

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._next = 0

    def next(self) -> Invocation:
        generation = int((trio.current_time() - self.t0) / self.key_period)
        mops: list[JSON] = []
        for _ in range(self.rng.randint(1, 3)):
            key = f"x{generation}-{self.rng.randrange(self.keys_at_once)}"
            if self.rng.random() < 0.5:
                self._next += 1
                mops.append(["append", key, self._next])
            else:
                mops.append(["r", key, None])
        return Invocation("txn", "append:txn", mops)

    async def perform(self, client: CampaignClient, address: str, inv: Invocation) -> JSON:
        statements = []
        for kind, key, value in inv.value:
            if kind == "append":
                statements.append(f"INSERT INTO append (k, v) VALUES ({_q(key)}, {int(value)})")
            else:
                statements.append(f"SELECT v FROM append WHERE k = {_q(key)} ORDER BY rowid")
        results = await client.sql(address, "; ".join(statements))
        if len(results) != len(statements):
            raise MicrotrioError(f"{len(statements)} statements gave {len(results)} results")
        done: list[JSON] = []
        for (kind, key, value), result in zip(inv.value, results, strict=True):
            if kind == "r":
                value = [int(v) for (v,) in result["rows"]]
            done.append([kind, key, value])
        return done

    def check(self, ops: Sequence[Op]) -> CheckResult:
        return check_append(ops, realtime=True)


WORKLOADS: Final = {
    w.name: w for w in (RegisterWorkload, BankWorkload, SetWorkload, AppendWorkload)
}


def make_workload(name: str, rng: random.Random) -> Workload:
    return WORKLOADS[name](rng)


async def perform_recorded(
    workload: Workload,
    client: CampaignClient,
    address: str,
    recorder: Recorder,
    process: int,
    inv: Invocation,
) -> Outcome:
    """Invoke, perform and complete one operation; how it ended (``FAIL`` only for an error:
    a compare-and-set mismatch or a refused transfer counts as ``OK`` here)."""
    event = recorder.invoke(process, inv.f, inv.key, inv.value)
    try:
        value = await workload.perform(client, address, inv)
    except _Mismatch as exc:
        recorder.fail(event, str(exc))
    except MicrotrioError as exc:
        if inv.f == "read" or is_definite(exc):
            recorder.fail(event, str(exc))
            return Outcome.FAIL
        recorder.info(event, str(exc))
        return Outcome.UNKNOWN
    else:
        recorder.ok(event, value)
    return Outcome.OK
