"""Raft metrics of one member, read at scrape time (``GET /core/1.0/metrics``).

:func:`install_raft_metrics` registers an async collector on the member's
:class:`~microtrio._metrics.MetricsRegistry`; at every scrape it asks the driver for its
:class:`~microtrio.raft.Status` and publishes (names reserved in :mod:`microtrio._metrics`):

* ``microtrio_raft_term``, ``microtrio_raft_role{role}`` (1 for the current role, 0 for the
  others), ``microtrio_raft_leader`` (1 when this member leads),
  ``microtrio_raft_commit_index``, ``microtrio_raft_applied_index``;
* ``microtrio_raft_log_entries`` (entries held in the in-memory log) and
  ``microtrio_raft_log_bytes`` (size of the Raft directory on disk: segments and snapshots);
* ``microtrio_raft_peer_lag_entries{peer}`` on the leader only: its last index minus what
  the peer is known to hold (``peer`` is the peer's Raft node id).

``replication`` is a getter: the member's replication changes when the database is reset or
re-joined, and before initialisation there is none (the families are then empty).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import trio

from .._errors import MicrotrioError
from .._metrics import Family, MetricsRegistry, Sample
from ..raft._types import StateRole
from ._raftdb import RaftReplication

__all__ = ["RAFT_FAMILIES", "install_raft_metrics"]

RAFT_FAMILIES = (
    Family("microtrio_raft_term", "gauge", "Current Raft term"),
    Family("microtrio_raft_role", "gauge", "1 for this member's current Raft role"),
    Family("microtrio_raft_leader", "gauge", "1 when this member is the Raft leader"),
    Family("microtrio_raft_commit_index", "gauge", "Highest committed Raft log index"),
    Family("microtrio_raft_applied_index", "gauge", "Highest Raft log index applied here"),
    Family("microtrio_raft_log_entries", "gauge", "Raft log entries held (not compacted)"),
    Family("microtrio_raft_log_bytes", "gauge", "Bytes of the Raft log and snapshots on disk"),
    Family(
        "microtrio_raft_peer_lag_entries",
        "gauge",
        "Entries a peer is behind the leader's last index (leader only)",
    ),
)


def _directory_bytes(directory: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # a segment removed by compaction while we walk
                continue
    return total


async def _raft_samples(replication: RaftReplication | None) -> list[Sample]:
    if replication is None:
        return []
    try:
        status = await replication.status()
    except MicrotrioError:  # no database yet, or the driver stopped
        return []
    out = [
        Sample("microtrio_raft_term", status.term),
        Sample("microtrio_raft_leader", 1 if status.role is StateRole.LEADER else 0),
        Sample("microtrio_raft_commit_index", status.commit),
        Sample("microtrio_raft_applied_index", status.applied),
        Sample("microtrio_raft_log_entries", max(0, status.last_index - status.first_index + 1)),
    ]
    out += [
        Sample("microtrio_raft_role", 1 if role is status.role else 0, {"role": role.value})
        for role in StateRole
    ]
    if status.role is StateRole.LEADER:
        out += [
            Sample(
                "microtrio_raft_peer_lag_entries",
                max(0, status.last_index - progress.match),
                {"peer": str(peer)},
            )
            for peer, progress in sorted(status.progress.items())
            if peer != status.id
        ]
    directory = replication._directory  # same package; RaftReplication has no public getter
    size = await trio.to_thread.run_sync(_directory_bytes, directory)
    out.append(Sample("microtrio_raft_log_bytes", size))
    return out


def install_raft_metrics(
    registry: MetricsRegistry, replication: Callable[[], RaftReplication | None]
) -> Callable[[], None]:
    """Publish the Raft families of whatever ``replication()`` returns at scrape time;
    returns the function that removes them."""
    return registry.add_async_collector(
        lambda: _raft_samples(replication()), families=RAFT_FAMILIES
    )
