"""Alembic's environment: migrates the connection gateway.store.schema hands over, in its transaction."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection

from gateway.store.tables import Base, UtcDateTime

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    # No URL in a config file: the database is always the one gateway.store.schema was given.
    raise RuntimeError("run migrations through gateway.store.schema (`gongji db upgrade`), not the alembic command")


def render_item(kind: str, obj: Any, _context: AutogenContext) -> str | Literal[False]:
    """Generated migrations name plain SQLAlchemy types, never our classes, which may change later."""
    if kind == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: batch operations copy the table instead, on SQLite only.
    render_as_batch=True,
    compare_type=True,
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
