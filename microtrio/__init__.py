"""microtrio: highly available services on a Raft-replicated SQLite database, on trio."""

from __future__ import annotations

from ._api._limits import DEFAULT_LIMITS as DEFAULT_LIMITS
from ._api._limits import Limits as Limits
from ._api._openapi import responds_with as responds_with
from ._api._resources import (
    Endpoint as Endpoint,
)
from ._api._resources import (
    EndpointAction as EndpointAction,
)
from ._api._resources import (
    EndpointAlias as EndpointAlias,
)
from ._api._resources import (
    Resources as Resources,
)
from ._api._resources import (
    Server as Server,
)
from ._api._state import (
    ClusterMemberLocal as ClusterMemberLocal,
)
from ._api._state import (
    RoleStatus as RoleStatus,
)
from ._api._state import (
    State as State,
)
from ._app import App as App
from ._client import Client as Client
from ._daemon import DaemonArgs as DaemonArgs
from ._db import DatabaseStatus as DatabaseStatus
from ._db import SchemaUpdate as SchemaUpdate
from ._errors import (
    BadRequestError as BadRequestError,
)
from ._errors import (
    ConflictError as ConflictError,
)
from ._errors import (
    CorruptionError as CorruptionError,
)
from ._errors import (
    DatabaseNotOpenError as DatabaseNotOpenError,
)
from ._errors import (
    DivergenceError as DivergenceError,
)
from ._errors import (
    ForbiddenError as ForbiddenError,
)
from ._errors import (
    MicrotrioError as MicrotrioError,
)
from ._errors import (
    NoLeaderError as NoLeaderError,
)
from ._errors import (
    NotFoundError as NotFoundError,
)
from ._errors import (
    NotImplementedMethodError as NotImplementedMethodError,
)
from ._errors import (
    OutcomeUnknownError as OutcomeUnknownError,
)
from ._errors import PayloadTooLargeError as PayloadTooLargeError
from ._errors import (
    ProtocolError as ProtocolError,
)
from ._errors import (
    RemoteError as RemoteError,
)
from ._errors import (
    StateError as StateError,
)
from ._errors import (
    TimeoutError_ as TimeoutError_,
)
from ._errors import TooManyAttemptsError as TooManyAttemptsError
from ._errors import (
    UnavailableError as UnavailableError,
)
from ._errors import (
    ValidationError as ValidationError,
)
from ._hooks import Hooks as Hooks
from ._hooks import HookType as HookType
from ._log import JsonFormatter as JsonFormatter
from ._log import MemberFilter as MemberFilter
from ._log import configure_logging as configure_logging
from ._state import DaemonConfig as DaemonConfig
from ._state import ServerConfig as ServerConfig

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "PayloadTooLargeError",
    "TooManyAttemptsError",
    "responds_with",
    "App",
    "BadRequestError",
    "Client",
    "ClusterMemberLocal",
    "DaemonArgs",
    "DaemonConfig",
    "DatabaseStatus",
    "Endpoint",
    "EndpointAction",
    "EndpointAlias",
    "HookType",
    "JsonFormatter",
    "MemberFilter",
    "configure_logging",
    "Hooks",
    "NotImplementedMethodError",
    "Resources",
    "RoleStatus",
    "SchemaUpdate",
    "Server",
    "ServerConfig",
    "State",
    "TimeoutError_",
    "ConflictError",
    "CorruptionError",
    "DatabaseNotOpenError",
    "DivergenceError",
    "ForbiddenError",
    "MicrotrioError",
    "NoLeaderError",
    "NotFoundError",
    "OutcomeUnknownError",
    "ProtocolError",
    "RemoteError",
    "StateError",
    "UnavailableError",
    "ValidationError",
    "__version__",
]
