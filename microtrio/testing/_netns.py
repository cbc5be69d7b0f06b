"""Network namespaces for a cluster under test, with partitions (root only).

Theory of operation
-------------------

:func:`open_netns_network` gives each member its own network namespace with one interface,
``eth0``, addressed in TEST-NET-1 (``192.0.2.0/24``, RFC 5737: documentation only, never
routed, so nothing can leak to a real network); member ``i`` gets ``192.0.2.(i+1)``. The
other end of each member's veth pair sits in a *hub* namespace, on a bridge. Nothing is
created in the host's own namespace: the whole network lives in namespaces this module made,
and the context manager deletes them all when it exits, by any path (deleting a namespace
destroys its ends of the veth pairs, and so the pairs).

Member processes are started inside their namespace (:meth:`NetnsNetwork.exec_prefix` is
``ip netns exec <ns>``) and listen on :meth:`NetnsNetwork.address`.

Partitions: these machines have neither ``nft`` nor ``iptables``, and ``tc`` has no
classifiers or netem. A directed link ``src -> dst`` is therefore cut in ``src``'s namespace
with a permanent neighbour entry that resolves ``dst``'s address to an unused, locally
administered MAC address: ``src``'s frames to ``dst`` go out, the bridge floods them (it never
learnt that address) and every port drops them. The loss is silent, like a pulled cable: no
error, TCP retransmits until its timeout, as under a real partition. The other direction is
unaffected, so asymmetric partitions are exact at the IP level (a TCP connection needs both
directions, so it stalls either way). Healing deletes the entries; ARP resolves again on the
next packet. Delay and loss are not available here (no netem): use the transport's fault
layer or :mod:`._proxy` for those.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final, final

import trio

from .._errors import UnavailableError, ValidationError

__all__ = ["NetnsNetwork", "can_connect", "netns_unavailable_reason", "open_netns_network"]

logger = logging.getLogger("microtrio.testing.netns")

Link = tuple[str, str]

SUBNET: Final = ipaddress.IPv4Network("192.0.2.0/24")  # TEST-NET-1
_BLACKHOLE_MAC: Final = "02:00:00:00:00:01"  # locally administered, never assigned here
_CLEANUP_TIMEOUT: Final = 20.0
_IP: Final = "ip"


async def _ip(*args: str) -> str:
    """Run ``ip args...``; a failure becomes :class:`UnavailableError` with ip's message."""
    try:
        proc = await trio.run_process(
            [_IP, *args], capture_stdout=True, capture_stderr=True, check=False
        )
    except OSError as exc:
        raise UnavailableError(f"cannot run ip: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise UnavailableError(f"ip {' '.join(args)} failed ({proc.returncode}): {err}")
    return proc.stdout.decode(errors="replace")


def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (``None`` if they can), for ``pytest.mark.skipif``.

    Blocking (it tries ``ip netns add`` and ``del``): call it before ``trio.run`` or in a
    worker thread.
    """
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which(_IP) is None:
        return "the ip command (iproute2) is not installed"
    probe = f"mtj-probe-{secrets.token_hex(3)}"
    for action in ("add", "del"):
        proc = subprocess.run(
            [_IP, "netns", action, probe], capture_output=True, check=False, timeout=30
        )
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            return f"ip netns {action} is not permitted: {err}"
    return None


@final
class NetnsNetwork:
    """A bridged network of one namespace per member; see the module docstring."""

    def __init__(self, tag: str, members: Sequence[str]) -> None:
        self.tag = tag
        self.members = tuple(members)
        self.hub = f"mtj-{tag}-hub"
        self._ns = {m: f"mtj-{tag}-{i}" for i, m in enumerate(self.members)}
        self._addr = {m: str(SUBNET.network_address + i + 1) for i, m in enumerate(self.members)}
        self._blocked: frozenset[Link] = frozenset()
        self._lock = trio.Lock()

    def namespace(self, member: str) -> str:
        return self._ns[member]

    def address(self, member: str) -> str:
        """The member's IPv4 address, reachable from the other members' namespaces."""
        return self._addr[member]

    def exec_prefix(self, member: str) -> list[str]:
        """Prefix a command with this to run it inside the member's namespace."""
        return [_IP, "netns", "exec", self._ns[member]]

    def hub_prefix(self) -> list[str]:
        """Prefix a command with this to run it in the hub namespace, which reaches every
        member at :attr:`hub_address` (no partition ever cuts it: the campaign's clients
        come in this way, through forwarders)."""
        return [_IP, "netns", "exec", self.hub]

    @property
    def hub_address(self) -> str:
        return str(SUBNET.broadcast_address - 1)

    @property
    def blocked(self) -> frozenset[Link]:
        return self._blocked

    async def partition(self, blocked: frozenset[Link]) -> None:
        """Cut exactly these directed links (``src`` cannot reach ``dst``); heal the others."""
        unknown = {m for link in blocked for m in link} - set(self.members)
        if unknown:
            raise ValidationError(f"unknown members in partition: {sorted(unknown)}")
        async with self._lock:
            for src, dst in sorted(self._blocked - blocked):
                await _ip("-n", self._ns[src], "neigh", "del", self._addr[dst], "dev", "eth0")
                self._blocked -= {(src, dst)}
            for src, dst in sorted(blocked - self._blocked):
                await _ip(
                    "-n", self._ns[src], "neigh", "replace", self._addr[dst],
                    "lladdr", _BLACKHOLE_MAC, "dev", "eth0", "nud", "permanent",
                )  # fmt: skip
                self._blocked |= {(src, dst)}
        logger.info("netns %s: %d links blocked", self.tag, len(blocked))

    async def heal(self) -> None:
        await self.partition(frozenset())

    async def _setup(self, created: list[str]) -> None:
        await _ip("netns", "add", self.hub)
        created.append(self.hub)
        await _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        await _ip("-n", self.hub, "link", "set", "br0", "up")
        hub_address = f"{self.hub_address}/{SUBNET.prefixlen}"
        await _ip("-n", self.hub, "addr", "add", hub_address, "dev", "br0")
        await _ip("-n", self.hub, "link", "set", "lo", "up")
        for i, m in enumerate(self.members):
            ns = self._ns[m]
            await _ip("netns", "add", ns)
            created.append(ns)
            port = f"p{i}"
            await _ip(
                "link", "add", "name", "eth0", "netns", ns, "type", "veth",
                "peer", "name", port, "netns", self.hub,
            )  # fmt: skip
            await _ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
            await _ip("-n", ns, "addr", "add", f"{self._addr[m]}/{SUBNET.prefixlen}", "dev", "eth0")
            await _ip("-n", ns, "link", "set", "eth0", "up")
            await _ip("-n", ns, "link", "set", "lo", "up")


async def _delete(namespaces: list[str]) -> None:
    with trio.move_on_after(_CLEANUP_TIMEOUT) as cs:
        cs.shield = True
        for ns in reversed(namespaces):
            try:
                await _ip("netns", "del", ns)
            except UnavailableError as exc:
                logger.warning("could not delete namespace %s: %s", ns, exc, exc_info=True)
    if cs.cancelled_caught:
        logger.error("deleting namespaces %s timed out", namespaces)


@asynccontextmanager
async def open_netns_network(members: Sequence[str]) -> AsyncIterator[NetnsNetwork]:
    """Namespaces, veth pairs and a bridge for ``members``; all deleted on exit.

    Raises :class:`UnavailableError` if they cannot be created (not root, no iproute2).
    """
    if not 1 <= len(members) <= 250 or len(set(members)) != len(members):
        raise ValidationError("between 1 and 250 distinct members")
    net = NetnsNetwork(secrets.token_hex(3), members)
    created: list[str] = []
    try:
        await net._setup(created)
        logger.info("netns %s: %d members on %s", net.tag, len(members), SUBNET)
        yield net
    finally:
        await _delete(created)


_CONNECT_SCRIPT: Final = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError:
    sys.exit(1)
"""


async def can_connect(
    net: NetnsNetwork, src: str, dst: str, port: int, *, connect_timeout: float
) -> bool:
    """Whether a TCP connection from ``src``'s namespace to ``dst``'s address:port opens."""
    cmd = [*net.exec_prefix(src), sys.executable, "-c", _CONNECT_SCRIPT,
           net.address(dst), str(port), str(connect_timeout)]  # fmt: skip
    proc = await trio.run_process(
        cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return proc.returncode == 0
