"""The engine: SQLite's pragmas and transactions, PostgreSQL's pool, and the schema made without migrations."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, select

from gateway.domain.audit import GENESIS
from gateway.store.tables import Base, audit_head_t, routing_version_t

# How SQLite syncs its write-ahead log: at every commit (FULL), or at checkpoints only (NORMAL).
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")
# How long a SQLite connection waits for another's write lock unless told otherwise (the CLI, migrations).
SQLITE_BUSY_SECONDS = 30.0
# A PostgreSQL connection back in the pool longer than this is checked (SELECT 1) before it is handed out again.
IDLE_CHECK_SECONDS = 1.0
# How long opening a PostgreSQL connection may take (libpq's connect_timeout; it counts whole seconds, 2 at least):
# an unreachable server fails a call after this, not after the operating system's TCP retries (minutes).
CONNECT_TIMEOUT_SECONDS = 5


def make_engine(url: str, sqlite_synchronous: str = "FULL", lock_wait_seconds: float | None = None) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout, and transactions we begin ourselves.

    `lock_wait_seconds`: how long a statement waits for a lock another connection holds before it fails
    (SQLite's busy timeout, PostgreSQL's lock_timeout); None: SQLite's 30 s, PostgreSQL's unbounded wait.
    """
    if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"sqlite_synchronous must be one of {SQLITE_SYNCHRONOUS}, got {sqlite_synchronous!r}")
    if url.startswith("sqlite"):
        busy_timeout_ms = round(1000 * (SQLITE_BUSY_SECONDS if lock_wait_seconds is None else lock_wait_seconds))
        # No reset-on-return: every unit of work ends its own transaction with COMMIT or ROLLBACK.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
                               pool_reset_on_return=None)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Autocommit at the driver: the unit of work issues BEGIN IMMEDIATE itself, which takes the
            # write lock up front (no deadlock-prone read-to-write upgrade between processes).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # lock_timeout 0 would mean no limit: a bound always waits at least a millisecond.
    options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    if lock_wait_seconds is not None:
        options["options"] = f"-c lock_timeout={max(1, round(1000 * lock_wait_seconds))}"
    engine = create_engine(url, pool_size=10, max_overflow=10, pool_reset_on_return=None, connect_args=options)
    _check_connections_left_idle(engine)
    return engine


def _check_connections_left_idle(engine: Engine) -> None:
    """A connection is checked before it is handed out only when it has been idle (IDLE_CHECK_SECONDS): one a
    restart of the database ended is replaced, and the busy pool of a loaded gateway pays no round trip a unit
    of work for it, as a check at every checkout (SQLAlchemy's pre-ping) would. A connection that breaks in use
    is not handed out again (SqlUnitOfWork drops it)."""

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _used_now(_dbapi_connection: Any, record: Any) -> None:
        record.info["used_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("used_at", 0.0) <= IDLE_CHECK_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # the pool drops it and hands out another (a new one if need be)
            raise exc.DisconnectionError(f"a pooled connection was lost: {error}") from error


def create_schema(engine: Engine) -> None:
    """The typed tables made directly, without the migrations: a schema the gateway refuses (tests show it)."""
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        if conn.execute(select(routing_version_t.c.version)).first() is None:
            conn.execute(routing_version_t.insert().values(id=1, version=0))
        if conn.execute(select(audit_head_t.c.size)).first() is None:
            conn.execute(audit_head_t.insert().values(id=1, size=0, head_hash=GENESIS))

