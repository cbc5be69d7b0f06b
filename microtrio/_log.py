"""Structured logging: the member name on every record.

Theory of operation
-------------------
Several members may run in one process (a test cluster, a host application embedding more
than one), so "which member logged this" cannot be a global. It is a :mod:`contextvars`
variable instead: :func:`member_context` sets it at the top of :meth:`Daemon.run
<microtrio._daemon.Daemon.run>`, and trio copies a task's context into every task it spawns
and into every ``trio.to_thread.run_sync`` call, so every task of that member (listeners,
request handlers, the Raft driver and transport, heartbeats, the database writer thread)
logs under it without passing anything around. The variable holds a *callable* returning the
name, not the name: a member renames itself at init (and back at reset) while its tasks run.
It also holds the member's map from Raft node ids to member names, so that the Raft shell can
name its peers in log lines (:func:`node_label`) without knowing about members.

:class:`MemberFilter` copies the current member onto each record as ``record.member`` (None
outside any member); attach it to a handler, not a logger (a logger's filters skip records of
its child loggers). The library never configures logging (STYLE.md): the CLI does, with
:func:`configure_logging` (``--log-format text`` or ``json``); a host application or a test
adds :class:`MemberFilter` to its own handlers.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Final, Literal, final

from ._errors import ValidationError

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "MemberFilter",
    "TextFormatter",
    "configure_logging",
    "current_member",
    "member_context",
    "node_label",
    "unconfigure_logging",
]

LogFormat = Literal["text", "json"]
#: The values of ``--log-format``.
LOG_FORMATS: Final = ("text", "json")

@final
@dataclass(frozen=True, slots=True)
class _Member:
    name: Callable[[], str]
    peer_name: Callable[[int], str | None]


_member: contextvars.ContextVar[_Member | None] = contextvars.ContextVar(
    "microtrio_member", default=None
)


def current_member() -> str | None:
    """The name of the member whose task (or worker thread) is running, None outside one."""
    member = _member.get()
    return None if member is None else member.name()


def node_label(node_id: int) -> str:
    """A Raft node id for a log line: ``member2 (5431098650213004025)`` when the current
    member knows whose id it is, else the bare id (0: ``none``)."""
    if node_id == 0:
        return "none"
    member = _member.get()
    name = None if member is None else member.peer_name(node_id)
    return f"{name} ({node_id})" if name else str(node_id)


@contextmanager
def member_context(
    name: Callable[[], str], peer_name: Callable[[int], str | None] = lambda node_id: None
) -> Iterator[None]:
    """Run the block, and every task and thread it spawns, as the member ``name()`` names;
    ``peer_name`` maps a Raft node id to a member name for :func:`node_label`."""
    token = _member.set(_Member(name, peer_name))
    try:
        yield
    finally:
        _member.reset(token)


@final
class MemberFilter(logging.Filter):
    """Sets ``record.member`` (the current member's name, None outside any member) on every
    record; keeps a value already there (``extra={"member": ...}``). Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "member", None) is None:
            record.member = current_member()
        return True


@final
class TextFormatter(logging.Formatter):
    """``time LEVEL [member] logger: message`` (``-`` for no member), then any traceback."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(member_label)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        member = getattr(record, "member", None)
        record.member_label = member if member is not None else "-"
        return super().format(record)


@final
class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``member``
    (null outside a member), ``message`` (arguments applied) and ``exc_info`` (the formatted
    traceback, or null)."""

    def format(self, record: logging.LogRecord) -> str:
        exc_text = None
        if record.exc_info:
            exc_text = self.formatException(record.exc_info)
        elif record.exc_text:
            exc_text = record.exc_text
        if record.stack_info:
            stack = self.formatStack(record.stack_info)
            exc_text = stack if exc_text is None else f"{exc_text}\n{stack}"
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        return json.dumps(
            {
                "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": record.levelname,
                "logger": record.name,
                "member": getattr(record, "member", None),
                "message": record.getMessage(),
                "exc_info": exc_text,
            },
            ensure_ascii=False,
            default=str,
        )


class _CliHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (so a second call replaces it).
    Without a stream of its own it writes to whatever ``sys.stderr`` is at each record (a
    program, or a test, may have replaced it since)."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__(stream)
        self._follow_stderr = stream is None
        self.previous_level = logging.getLogger().level

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def configure_logging(
    level: int, log_format: LogFormat = "text", *, stream: IO[str] | None = None
) -> logging.Handler:
    """The CLI's (and only the CLI's) handler set-up: one handler on the root logger writing
    to ``stream`` (default: the current ``sys.stderr``) in ``log_format``, with
    :class:`MemberFilter`. Replaces handlers an earlier call installed; returns the handler
    (a program that runs the CLI in-process removes it again with :func:`unconfigure_logging`)."""
    if log_format not in LOG_FORMATS:
        choices = ", ".join(LOG_FORMATS)
        raise ValidationError(f"log format must be one of {choices}, not {log_format!r}")
    handler = _CliHandler(stream)
    handler.addFilter(MemberFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _CliHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if level > logging.DEBUG:  # one line per request otherwise
        logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler


def unconfigure_logging(handler: logging.Handler) -> None:
    """Undo :func:`configure_logging`: remove its handler, restore the root logger's level."""
    root = logging.getLogger()
    root.removeHandler(handler)
    if isinstance(handler, _CliHandler):
        root.setLevel(handler.previous_level)
    handler.close()
