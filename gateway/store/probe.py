"""The write probe: whether the database can be written now, found by taking the locks a write takes and letting go."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from gateway.domain.errors import DatabaseBusy
from gateway.store.engine import make_engine
from gateway.store.prepared import contention
from gateway.store.tables import Base, audit_head_t


class WriteProbe:
    """Takes what every write needs, waiting at most `wait_seconds`, and gives it back at once (nothing is written).

    SQLite: its one write lock (BEGIN IMMEDIATE). PostgreSQL: every table in ROW EXCLUSIVE mode, as an INSERT or
    UPDATE takes it (held up by LOCK TABLE, ALTER TABLE, VACUUM FULL elsewhere, or one queued), and the audit
    chain's head row, which every change updates last.
    """

    def __init__(self, database_url: str, wait_seconds: float, writes_begun: Callable[[], int] | None = None) -> None:
        # Its own connection, waiting on its own thread: the gateway's pool and its waits are left alone.
        self._engine = make_engine(database_url, lock_wait_seconds=wait_seconds)
        self._is_sqlite = self._engine.dialect.name == "sqlite"
        # SQLite hands its lock to whichever waiter tries at the right moment, not in turn: under a heavy load of
        # the gateway's own writes the probe may miss it for its whole wait. Writes begun meanwhile prove the
        # database can be written all the same.
        self._writes_begun = writes_begun
        quote = self._engine.dialect.identifier_preparer.format_table
        tables = ", ".join(quote(table) for table in Base.metadata.sorted_tables)
        self._statements = (
            ("BEGIN IMMEDIATE", "ROLLBACK") if self._is_sqlite else
            (f"LOCK TABLE {tables} IN ROW EXCLUSIVE MODE",
             str(select(audit_head_t.c.size).with_for_update().compile(dialect=self._engine.dialect))))

    def __call__(self) -> bool:
        """True when the database can be written; False when a lock held elsewhere outlasted the wait. Any other
        failure (the database unreachable, say) is raised."""
        writes_begun = self._writes_begun
        before = writes_begun() if writes_begun is not None else 0
        connection = self._engine.raw_connection()
        try:
            cursor = connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                with contention():
                    for statement in self._statements:
                        cursor.execute(statement)
            except DatabaseBusy:
                return writes_begun is not None and writes_begun() != before
            finally:
                cursor.close()
                if not self._is_sqlite:
                    connection.rollback()
            return True
        finally:
            connection.close()

    def close(self) -> None:
        self._engine.dispose()
