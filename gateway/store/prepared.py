"""Statements compiled once from the typed tables, executed straight on the driver's cursor.

SQLAlchemy builds, caches and runs a Core statement in ~40 µs; the driver itself needs ~3 µs. On the
transfer path that difference was most of the gateway's CPU (about 30 statements per transfer), so
hot statements are written with SQLAlchemy against the typed mappings, compiled once per dialect,
and executed on the DBAPI cursor with SQLAlchemy's own bind and result processors for the column
types (so values read and written are exactly what SQLAlchemy would read and write).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement

from gateway.domain import reasons
from gateway.domain.errors import Contention, DatabaseBusy, DatabaseUnavailable

Processor = Callable[[Any], Any] | None


class Prepared:
    """One statement compiled for one dialect."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        # Executed without SQLAlchemy: no expanding ("IN :list") parameters; write equalities instead.
        compiled: Any = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self._bind_processors: dict[str, Processor] = dict(compiled._bind_processors)
        self._positional: tuple[str, ...] | None = (
            tuple(compiled.positiontup) if compiled.positional and compiled.positiontup is not None else None
        )
        result_columns = getattr(compiled, "_result_columns", None) or []
        self.columns: tuple[str, ...] = tuple(column[0] for column in result_columns)
        self._result_processors: tuple[Processor, ...] = tuple(
            column[3]._cached_result_processor(dialect, None) for column in result_columns
        )
        self._any_result_processor = any(p is not None for p in self._result_processors)
        # Values written into the statement (literals SQLAlchemy turned into bound parameters).
        self._defaults = {name: value for name, value in compiled.params.items() if value is not None}
        # For positional drivers (SQLite): the parameter order with each one's processor, worked out once.
        self._plan: tuple[tuple[str, Processor], ...] | None = (
            tuple((name, self._bind_processors.get(name)) for name in self._positional)
            if self._positional is not None else None)

    def params(self, given: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        values = {**self._defaults, **given} if self._defaults else given
        if self._plan is not None:
            return tuple(processor(values[name]) if processor else values[name] for name, processor in self._plan)
        return {name: (processor(value) if (processor := self._bind_processors.get(name)) else value)
                for name, value in values.items()}

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        if not self._any_result_processor:
            return tuple(raw)
        return tuple(p(v) if p is not None else v for p, v in zip(self._result_processors, raw, strict=True))


def _transient(error: Exception) -> bool:
    """A failure another transaction caused, after which the same work may well succeed at once."""
    return getattr(error, "sqlstate", None) in ("40001", "40P01")  # psycopg: serialization failure, deadlock


def _locked(error: Exception) -> bool:
    """A lock another connection holds outlasted this connection's wait: SQLite's busy timeout ("database is
    locked"), PostgreSQL's lock_timeout (55P03, lock_not_available)."""
    if getattr(error, "sqlstate", None) == "55P03":
        return True
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


# PostgreSQL's classes of a connection ended by the server: connection exception (08…), admin or crash shutdown,
# cannot connect now (57P01-57P03).
_CONNECTION_ENDED = ("08", "57P01", "57P02", "57P03")


def _lost(error: Exception, connection: Any) -> bool:
    """The connection is gone (the database restarted or ended it): libpq's own errors carry no SQLSTATE, so the
    driver's word that the connection is broken counts as much as the server's code."""
    sqlstate = getattr(error, "sqlstate", None) or ""
    return bool(getattr(connection, "broken", False)) or sqlstate.startswith(_CONNECTION_ENDED)


@contextmanager
def contention(connection: Any = None) -> Iterator[None]:
    """Driver errors another connection or the database itself caused, as the domain's: DatabaseBusy, Contention,
    DatabaseUnavailable (on `connection`, the DBAPI connection the statement ran on)."""
    try:
        yield
    except Exception as error:
        if _lost(error, connection):
            raise DatabaseUnavailable("the gateway lost its connection to the database during the call: retry with "
                                      "the same message_id, which executes once",
                                      reason=reasons.DATABASE_UNAVAILABLE) from error
        if _locked(error):
            raise DatabaseBusy("the database is locked by another connection; nothing was changed",
                               reason=reasons.DATABASE_BUSY) from error
        if _transient(error):
            raise Contention("the database gave up on this transaction because of another one; "
                             "nothing was changed") from error
        raise


class Cursor:
    """Runs prepared statements on one DBAPI connection (inside the unit of work's transaction)."""

    def __init__(self, dbapi_connection: Any) -> None:
        self._connection = dbapi_connection
        self._cursor = dbapi_connection.cursor()
        # Writes nothing in the transaction reads back, sent with its commit (no round trip each on PostgreSQL).
        self._later: list[tuple[Prepared, dict[str, Any]]] = []

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Statements in the block are sent without waiting for each one's answer, until one is read or the
        transaction ends (psycopg's pipeline mode): a row locked early in the block stays locked for the round
        trips the block makes, not one a statement. SQLite, in-process, has no round trips to save."""
        pipeline = getattr(self._connection, "pipeline", None)
        if pipeline is None:
            yield
            return
        with contention(self._connection), pipeline():
            yield

    def run(self, statement: Prepared, **values: Any) -> int:
        """Execute; returns the driver's row count."""
        with contention(self._connection):
            self._cursor.execute(statement.sql, statement.params(values))
        return int(self._cursor.rowcount)

    def later(self, statement: Prepared, **values: Any) -> None:
        """Execute with the commit (write_later), in the order queued: for a write nothing in this transaction
        reads back."""
        self._later.append((statement, values))

    @property
    def has_later(self) -> bool:
        return bool(self._later)

    def write_later(self) -> None:
        """Execute the writes queued by later() (the unit of work, just before its commit)."""
        for statement, values in self._later:
            self.run(statement, **values)
        self._later.clear()

    def run_many(self, statement: Prepared, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            with contention(self._connection):
                self._cursor.executemany(statement.sql, [statement.params(row) for row in rows])

    def first(self, statement: Prepared, **values: Any) -> tuple[Any, ...] | None:
        with contention(self._connection):
            self._cursor.execute(statement.sql, statement.params(values))
            raw = self._cursor.fetchone()
        return None if raw is None else statement.row(raw)

    def together(self, *reads: tuple[Prepared, Mapping[str, Any]]) -> list[tuple[Any, ...] | None]:
        """The first row of each statement (None if it has none), in order, the statements sent together: on
        PostgreSQL (psycopg's pipeline mode) all their answers come in one round trip, and the batch's closing
        sync is one more, for any number of them; SQLite runs them one by one. Executed in the order given, so
        rows locked by one are locked before the next runs, as one by one."""
        pipeline = getattr(self._connection, "pipeline", None)
        if pipeline is None:
            return [self.first(statement, **values) for statement, values in reads]
        cursors = [self._connection.cursor() for _ in reads]
        try:
            with contention(self._connection), pipeline():
                for cursor, (statement, values) in zip(cursors, reads, strict=True):
                    cursor.execute(statement.sql, statement.params(values))
                raws = [cursor.fetchone() for cursor in cursors]  # the first waits for them all
        finally:
            for cursor in cursors:
                cursor.close()
        return [None if raw is None else statement.row(raw) for raw, (statement, _) in zip(raws, reads, strict=True)]

    def all(self, statement: Prepared, **values: Any) -> list[tuple[Any, ...]]:
        with contention(self._connection):
            self._cursor.execute(statement.sql, statement.params(values))
            rows = self._cursor.fetchall()
        return [statement.row(raw) for raw in rows]

    def begin(self, sql: str) -> int | None:
        """PostgreSQL: run `sql`, a BEGIN and a one-value SELECT, as one simple query (one round trip; psycopg
        sends a query without parameters so); returns the SELECT's value."""
        with contention(self._connection):
            self._cursor.execute(sql)
            self._cursor.nextset()
            raw = self._cursor.fetchone()
        return None if raw is None else int(raw[0])

    def raw(self, sql: str) -> None:
        with contention(self._connection):
            self._cursor.execute(sql)

    def close(self) -> None:
        self._cursor.close()
