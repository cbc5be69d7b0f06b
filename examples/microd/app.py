"""The example application's definition: everything it hands microtrio."""

from __future__ import annotations

import microtrio

from .api import EXTENDED_SERVER
from .hooks import HOOKS
from .schema import SCHEMA_UPDATES

__all__ = ["API_EXTENSIONS", "VERSION", "daemon_args"]

VERSION = "0.0.1"
#: Reported in ``GET /core/1.0`` after microtrio's own ``internal:`` extensions.
API_EXTENSIONS = ("custom_extension_a_0", "custom_extension_a_1")


def daemon_args(
    *,
    heartbeat_interval: float = 0.0,
    socket_group: str | None = None,
    **overrides: object,
) -> microtrio.DaemonArgs:
    """The example's ``DaemonArgs`` (tests pass ``drain_timeout`` and the like)."""
    return microtrio.DaemonArgs(
        version=VERSION,
        schema_updates=SCHEMA_UPDATES,
        api_extensions=API_EXTENSIONS,
        servers={"extended": EXTENDED_SERVER},
        hooks=HOOKS,
        heartbeat_interval=heartbeat_interval,
        socket_group=socket_group,
        **overrides,  # type: ignore[arg-type]
    )
