"""The example's schema updates. Append new ones; never reorder or edit released ones."""

from __future__ import annotations

import microtrio

SCHEMA_UPDATES: tuple[microtrio.SchemaUpdate, ...] = (
    microtrio.SchemaUpdate(
        """
        CREATE TABLE extended_table (
            id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            UNIQUE (key)
        )
        """,
        name="extended_table",
    ),
    microtrio.SchemaUpdate(
        """
        CREATE TABLE some_other_table (
            id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
            field_one TEXT NOT NULL,
            field_two TEXT NOT NULL,
            UNIQUE (field_one),
            UNIQUE (field_two)
        )
        """,
        name="some_other_table",
    ),
)
