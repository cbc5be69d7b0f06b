"""Keeping full garbage collections short in a daemon process (``gc.freeze``).

CPython's cyclic collector scans every tracked object on a full (generation-2) collection.
A member daemon holds several hundred thousand of them before it serves a single request
(the modules of trio, hypercorn, Quart, werkzeug, cryptography, apsw, and its own state),
and a full collection of that heap took 76 ms on the benchmark machine: one ran now and
then under load, stalling every request of the member for that long (a leader's 84 ms
maximum at one client, traced with ``gc.callbacks``; docs/benchmarks.md).

:func:`freeze_heap` collects once and then moves every surviving object into the
interpreter's permanent generation, which later collections skip. Objects frozen are still
freed by reference counting when they die; only a reference cycle among them that becomes
garbage later is never collected. Freezing at a few settled moments (the daemon ready, the
database open) bounds that to objects alive at those moments.

The heap is the process's, so only a process that IS the daemon freezes it:
:meth:`microtrio.App.start` (the foreground daemon of a CLI) asks for it, and
:meth:`microtrio.App.run` (a member inside a host application's nursery, and the tests'
in-process members) does not unless told to.
"""

from __future__ import annotations

import gc
import logging
import time

__all__ = ["freeze_heap"]

logger = logging.getLogger("microtrio.daemon")


def freeze_heap(reason: str) -> int:
    """Collect garbage, then freeze what survives (see the module docstring); returns the
    number of objects in the permanent generation. Blocks the calling thread for one full
    collection (tens of milliseconds in a daemon that just started)."""
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info(
        "heap frozen (%s): %d objects, %.0f ms; garbage collections skip them",
        reason,
        frozen,
        (time.perf_counter() - start) * 1e3,
    )
    return frozen
