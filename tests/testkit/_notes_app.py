"""A tiny application for the test kit's tests: one schema update and one endpoint."""

from __future__ import annotations

from typing import Any

from quart import Request

import microtrio

SCHEMA = (microtrio.SchemaUpdate("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)"),)


async def add_note(state: microtrio.State, req: Request) -> Any:
    body = await req.get_json()
    text = str(body["text"])

    def insert(conn: Any) -> int:
        conn.execute("INSERT INTO notes (text) VALUES (?)", (text,))
        return int(conn.last_insert_rowid())

    return {"id": await state.database.transaction(insert)}


async def list_notes(state: microtrio.State, req: Request) -> Any:
    def select(conn: Any) -> list[str]:
        return [row[0] for row in conn.execute("SELECT text FROM notes ORDER BY id")]

    return await state.database.read(select)


NOTES = microtrio.Server(
    resources=[
        microtrio.Resources(
            "1.0",
            [
                microtrio.Endpoint(
                    "notes",
                    get=microtrio.EndpointAction(list_notes),
                    post=microtrio.EndpointAction(add_note),
                )
            ],
        )
    ],
    core_api=True,
    serve_unix=True,
)


def notes_args(name: str = "") -> microtrio.DaemonArgs:
    return microtrio.DaemonArgs(
        version="1.0", schema_updates=SCHEMA, servers={"notes": NOTES}, drain_timeout=2.0
    )
