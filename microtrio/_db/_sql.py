"""SQL passthrough helpers (reference 6.9): statement splitting, results, dump.

Unlike microcluster we split with :func:`apsw.complete`, so semicolons inside
string literals, comments and trigger bodies do not end a statement, and the
whole request runs in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import apsw

__all__ = ["SQLResult", "split_statements"]


@dataclass(frozen=True)
class SQLResult:
    """One statement's result; :meth:`to_json` gives the wire shape (``SQLResult``)."""

    type: Literal["select", "exec"]
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    rows_affected: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "columns": list(self.columns) if self.type == "select" else None,
            "rows": [list(r) for r in self.rows] if self.type == "select" else None,
            "rows_affected": self.rows_affected,
        }


def split_statements(query: str) -> list[str]:
    """Split ``query`` into complete statements, keeping quotes, comments and triggers intact.

    Pieces that hold only whitespace, semicolons or comments are dropped; a trailing
    incomplete statement is kept (executing it reports the syntax error).
    """
    statements: list[str] = []
    start = 0
    pos = 0
    while True:
        pos = query.find(";", pos)
        if pos < 0:
            break
        pos += 1
        piece = query[start:pos]
        if apsw.complete(piece):
            _keep(statements, piece)
            start = pos
    _keep(statements, query[start:])
    return statements


def _keep(statements: list[str], piece: str) -> None:
    if _is_blank(piece):
        return
    statements.append(piece.strip())


def _is_blank(piece: str) -> bool:
    """True when ``piece`` holds no SQL tokens (only whitespace, ``;`` and comments)."""
    text = piece
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace() or ch == ";":
            i += 1
        elif text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            return False
    return True


def stringify_row(row: Sequence[Any]) -> tuple[Any, ...]:
    """Bytes become strings (as microcluster does); other values pass through."""
    return tuple(
        v.decode("utf-8", errors="replace") if isinstance(v, bytes | bytearray | memoryview)
        and not isinstance(v, memoryview) else (bytes(v).decode("utf-8", errors="replace")
                                                if isinstance(v, memoryview) else v)
        for v in row
    )
