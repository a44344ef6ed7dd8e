"""The schema's revision under Alembic: upgrade to head, and refuse a database this code does not know."""

from __future__ import annotations

import enum
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

# Re-exported for the operators' `gongji db` commands: the engine the gateway itself would open.
from gateway.store.engine import make_engine as make_engine

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
VERSION_TABLE = "alembic_version"
# Serialises gateways migrating one PostgreSQL database at once (an arbitrary constant of ours).
_PG_LOCK_KEY = 0x676F6E676A69  # "gongji"


class SchemaError(Exception):
    """The database's schema is not one this gateway may run on; the message says what to do."""


class SchemaState(enum.Enum):
    EMPTY = "empty"  # no tables at all
    CURRENT = "current"  # at this code's head revision
    BEHIND = "behind"  # at an older revision this code knows: upgradable
    UNKNOWN = "unknown"  # at a revision this code does not know (a newer Gongji migrated it)
    UNVERSIONED = "unversioned"  # tables, but no revision recorded: not made by these migrations


@dataclass(frozen=True)
class SchemaStatus:
    state: SchemaState
    revision: str | None  # what the database records (several heads joined by commas); None: nothing
    head: str  # this code's newest revision

    def problem(self) -> str:
        """Why the gateway will not run on this database as it is, and what to do about it."""
        if self.state is SchemaState.EMPTY:
            return ("the database has no schema: create it with `gongji db upgrade` "
                    "(or start the gateway with GONGJI_AUTO_MIGRATE=true)")
        if self.state is SchemaState.BEHIND:
            return (f"the database's schema is at revision {self.revision}, this gateway needs {self.head}: "
                    "run `gongji db upgrade` (or start the gateway with GONGJI_AUTO_MIGRATE=true)")
        if self.state is SchemaState.UNKNOWN:
            return (f"the database's schema is at revision {self.revision}, which this gateway does not know "
                    f"(its newest is {self.head}): it was migrated by another version of Gongji; run that version")
        if self.state is SchemaState.UNVERSIONED:
            return (f"the database has tables but no schema revision (no {VERSION_TABLE} table): it was not "
                    "made by `gongji db upgrade`; give the gateway an empty database or one it migrated")
        return ""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code: the migrations in this package, run on `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """This code's newest revision (one only: two heads mean two migrations need merging)."""
    head = _scripts().get_current_head()
    if head is None:
        raise SchemaError(f"no migrations in {MIGRATIONS}")
    return head


def _known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _scripts().walk_revisions())


def _status(conn: Connection) -> SchemaStatus:
    head = head_revision()
    tables = set(inspect(conn).get_table_names())
    heads = MigrationContext.configure(conn).get_current_heads() if VERSION_TABLE in tables else ()
    if not heads:
        state = SchemaState.UNVERSIONED if tables - {VERSION_TABLE} else SchemaState.EMPTY
        return SchemaStatus(state, None, head)
    revision = ",".join(heads)
    if heads == (head,):
        return SchemaStatus(SchemaState.CURRENT, revision, head)
    known = set(heads) <= _known_revisions()
    return SchemaStatus(SchemaState.BEHIND if known else SchemaState.UNKNOWN, revision, head)


def _lock(conn: Connection) -> None:
    """Hold the right to migrate until the transaction ends; SQLite's BEGIN IMMEDIATE already does."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def schema_status(engine: Engine) -> SchemaStatus:
    """Where the database's schema stands against this code's migrations (reads only)."""
    with engine.connect() as conn:
        return _status(conn)


def current_revision(engine: Engine) -> str | None:
    """The revision the database records, or None (empty, or tables without a revision)."""
    return schema_status(engine).revision


def ensure_known_schema(engine: Engine, auto_upgrade: bool) -> SchemaStatus:
    """Return the status found if the gateway may run on this database, upgrading it first if allowed.

    An empty database or one at an older known revision is upgraded to head when `auto_upgrade`, and
    refused otherwise; a revision this code does not know, or tables without a revision, are always
    refused (SchemaError). The check and the upgrade are one transaction, under a lock.
    """
    with engine.begin() as conn:
        _lock(conn)
        found = _status(conn)
        if found.state is SchemaState.CURRENT:
            return found
        if not (auto_upgrade and found.state in (SchemaState.EMPTY, SchemaState.BEHIND)):
            raise SchemaError(found.problem())
        command.upgrade(alembic_config(conn), "head")
        log.info("database schema upgraded from %s to %s", found.revision or "nothing", found.head)
        return found


def upgrade(engine: Engine) -> SchemaStatus:
    """Upgrade the database to head (nothing to do at head); return the status found before."""
    return ensure_known_schema(engine, auto_upgrade=True)
