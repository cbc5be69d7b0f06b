"""microtrio.raft: the pure Raft consensus core (no I/O, no clock, injected randomness).

Drive a :class:`RaftNode` with ``tick()``, ``step(msg)`` and ``propose(data)``; collect work
with ``ready()``, do it (persist, send, apply) and call ``advance(ready)``.

A founding member starts from :func:`bootstrap_state`; a joining member from ``None``; a
restarting one from the :class:`PersistedState` its storage loads (plus ``Config.applied``, the
index its state machine already holds). After ``compact(index, data)`` the caller persists the
returned :class:`Snapshot` and may drop durable entries before ``RaftNode.first_index``.
Membership changes are proposed as a whole new :class:`ConfState` differing in one member
(``propose_conf_change(status().conf.with_role(node, role))``); a CONF_CHANGE entry's data
decodes with :func:`decode_conf_state`. Messages cross the wire as :func:`encode_message` bytes.
"""

from __future__ import annotations

from ._codec import (
    SCHEMA_VERSION as SCHEMA_VERSION,
)
from ._codec import (
    decode_conf_state as decode_conf_state,
)
from ._codec import (
    decode_message as decode_message,
)
from ._codec import (
    encode_conf_state as encode_conf_state,
)
from ._codec import (
    encode_message as encode_message,
)
from ._errors import (
    CodecError as CodecError,
)
from ._errors import (
    ConfChangeInProgressError as ConfChangeInProgressError,
)
from ._errors import (
    NotLeaderError as NotLeaderError,
)
from ._errors import (
    ProposalDroppedError as ProposalDroppedError,
)
from ._errors import (
    RaftUsageError as RaftUsageError,
)
from ._messages import (
    Message as Message,
)
from ._messages import (
    MsgApp as MsgApp,
)
from ._messages import (
    MsgAppResp as MsgAppResp,
)
from ._messages import (
    MsgHeartbeat as MsgHeartbeat,
)
from ._messages import (
    MsgHeartbeatResp as MsgHeartbeatResp,
)
from ._messages import (
    MsgPreVote as MsgPreVote,
)
from ._messages import (
    MsgPreVoteResp as MsgPreVoteResp,
)
from ._messages import (
    MsgReadIndex as MsgReadIndex,
)
from ._messages import (
    MsgReadIndexResp as MsgReadIndexResp,
)
from ._messages import (
    MsgSnap as MsgSnap,
)
from ._messages import (
    MsgSnapResp as MsgSnapResp,
)
from ._messages import (
    MsgTimeoutNow as MsgTimeoutNow,
)
from ._messages import (
    MsgVote as MsgVote,
)
from ._messages import (
    MsgVoteResp as MsgVoteResp,
)
from ._node import RaftNode as RaftNode
from ._node import bootstrap_state as bootstrap_state
from ._ready import Ready as Ready
from ._types import (
    Config as Config,
)
from ._types import (
    ConfState as ConfState,
)
from ._types import (
    Entry as Entry,
)
from ._types import (
    EntryType as EntryType,
)
from ._types import (
    HardState as HardState,
)
from ._types import (
    NodeId as NodeId,
)
from ._types import (
    PersistedState as PersistedState,
)
from ._types import (
    ProgressState as ProgressState,
)
from ._types import (
    ProgressStatus as ProgressStatus,
)
from ._types import (
    ReadState as ReadState,
)
from ._types import (
    Role as Role,
)
from ._types import (
    Snapshot as Snapshot,
)
from ._types import (
    SnapshotMeta as SnapshotMeta,
)
from ._types import (
    SoftState as SoftState,
)
from ._types import (
    StateRole as StateRole,
)
from ._types import (
    Status as Status,
)

__all__ = [
    "SCHEMA_VERSION",
    "CodecError",
    "ConfChangeInProgressError",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MsgApp",
    "MsgAppResp",
    "MsgHeartbeat",
    "MsgHeartbeatResp",
    "MsgPreVote",
    "MsgPreVoteResp",
    "MsgReadIndex",
    "MsgReadIndexResp",
    "MsgSnap",
    "MsgSnapResp",
    "MsgTimeoutNow",
    "MsgVote",
    "MsgVoteResp",
    "NodeId",
    "NotLeaderError",
    "PersistedState",
    "ProgressState",
    "ProgressStatus",
    "ProposalDroppedError",
    "RaftNode",
    "RaftUsageError",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "StateRole",
    "Status",
    "bootstrap_state",
    "decode_conf_state",
    "decode_message",
    "encode_conf_state",
    "encode_message",
]
