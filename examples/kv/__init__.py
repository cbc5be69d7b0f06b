"""A small replicated key-value service on microtrio (used by the benchmarks and the
fault suite).

``PUT /1.0/kv/{key}`` stores the raw request body, ``GET /1.0/kv/{key}`` answers it
(``application/octet-stream``; linearizable, or local with ``?stale=1``),
``DELETE /1.0/kv/{key}`` removes it; a missing key is a 404 error envelope. The endpoints
are on the core API (mutual TLS, trusted callers only) and on the control socket.
"""

from __future__ import annotations

from .service import KV_SERVER, SCHEMA_UPDATES, VERSION, daemon_args

__all__ = ["KV_SERVER", "SCHEMA_UPDATES", "VERSION", "daemon_args"]
