"""The unit of work (one database transaction, every repository on its connection) and the SqlStore it shares."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine

from gateway.domain import reasons
from gateway.domain.errors import DatabaseUnavailable
from gateway.store.prepared import Cursor, contention
from gateway.store.repositories.audit import SqlAuditLog
from gateway.store.repositories.bindings import SqlBindingRepository
from gateway.store.repositories.gateway_keys import SqlGatewayKeyRepository
from gateway.store.repositories.members import SqlMemberRepository
from gateway.store.repositories.outbox import SqlOutboxRepository
from gateway.store.repositories.quotas import SqlQuotaRepository
from gateway.store.repositories.relation_queries import SqlRelationQueryLog
from gateway.store.repositories.requests import SqlRequestRepository
from gateway.store.repositories.routing import RoutingCache, SqlProvinceRepository
from gateway.store.repositories.settlements import SqlSettlementRepository
from gateway.store.repositories.submissions import SqlSubmissionReads
from gateway.store.repositories.totals import SqlTotals
from gateway.store.repositories.transfers import SqlTransferRepository
from gateway.store.sealing import Sealer
from gateway.store.statements import Statements

log = logging.getLogger(__name__)


class SqlStore:
    """What the units of work of one database share: its engine, the statements compiled for it, its routing
    cache, and how its personal data is sealed. Built once by whoever opens the database (app.py), and given
    to each unit of work: nothing is looked up by engine."""

    def __init__(self, engine: Engine, sealer: Sealer) -> None:
        self.engine = engine
        self.sealer = sealer
        self.statements = Statements(engine)
        self.routing = RoutingCache()
        self.is_sqlite = engine.dialect.name == "sqlite"
        # What the pool raises when it cannot open a connection to a database server (the driver's own error);
        # none for SQLite, whose file failing to open is not a database that will come back.
        self.unreachable: tuple[type[Exception], ...] = () if self.is_sqlite else (
            engine.dialect.loaded_dbapi.OperationalError,)
        # PostgreSQL: how a unit of work begins, and the routing table's version read in the same round trip
        # (one simple query of two statements; see SqlUnitOfWork.__enter__).
        self.begin_sql = {read_only: f"{begin}; {self.statements.routing_version_sql}" for read_only, begin in (
            (False, "BEGIN"), (True, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))}
        # An event loop's thread that runs use cases itself, and the engine its units of work use (see loop_uses).
        self._loop_thread: int | None = None
        self._loop_engine = engine
        # Write transactions begun on SQLite (it took its write lock): proof the database can be written.
        self.writes_begun = 0
        # Called (on the committing thread) after a commit that made outbox messages due which only a claim finds:
        # the outbox loop listens (app.py), so it claims them now rather than at its next poll, and only then.
        self.claimable_committed: Callable[[], None] = lambda: None

    def loop_uses(self, engine: Engine) -> None:
        """Units of work begun on this thread (an event loop's, running use cases itself) take their connections
        from `engine`, made not to wait for another connection's lock: SQLite would wait inside its own call,
        holding up the whole loop, where the loop's runner fails the attempt at once and makes it again after a
        pause in which everything else runs. Other threads (and the engine's direct users) wait as `self.engine`
        does."""
        self._loop_thread, self._loop_engine = threading.get_ident(), engine

    def _engine_here(self) -> Engine:
        return self._loop_engine if threading.get_ident() == self._loop_thread else self.engine

    def unit_of_work(self, read_only: bool = False) -> SqlUnitOfWork:
        """A new unit of work on this store (the use cases' UnitOfWorkFactory)."""
        return SqlUnitOfWork(self, read_only)


class SqlUnitOfWork:
    """One database transaction; leaving the block without commit() rolls it back."""

    def __init__(self, store: SqlStore, read_only: bool = False) -> None:
        self._store = store
        # Reads only: one consistent snapshot, no write lock, a write refused (see UnitOfWorkFactory).
        self._read_only = read_only

    def __enter__(self) -> SqlUnitOfWork:
        try:
            self._connection = self._store._engine_here().raw_connection()
        except self._store.unreachable as error:
            raise DatabaseUnavailable("the gateway cannot reach its database: nothing was done, retry with the same "
                                      "message_id", reason=reasons.DATABASE_UNAVAILABLE) from error
        driver = self._connection.driver_connection
        self._cursor = Cursor(driver)
        self._open = True
        routing_version: int | None = None
        try:
            if self._store.is_sqlite and self._read_only:
                # A deferred BEGIN in WAL mode reads one snapshot without the write lock: beside the one writer.
                self._cursor.raw("PRAGMA query_only = ON")
                self._cursor.raw("BEGIN")
            elif self._store.is_sqlite:
                self._cursor.raw("BEGIN IMMEDIATE")
                self._store.writes_begun += 1
            else:
                # psycopg would send its BEGIN in a round trip of its own before the first statement: the unit of
                # work says BEGIN itself (the driver in autocommit until the transaction ends, so it adds none),
                # with the routing table's version, which nearly every call reads, in the same round trip.
                driver.autocommit = True  # type: ignore[union-attr]
                routing_version = self._cursor.begin(self._store.begin_sql[self._read_only])
        except BaseException:  # the transaction did not begin (the database is locked): the connection goes back
            self.__exit__()
            raise
        # Each repository is given what it uses of the store, and nothing is found by engine.
        cursor, statements, sealer = self._cursor, self._store.statements, self._store.sealer
        dialect = self._store.engine.dialect
        self.audit = SqlAuditLog(cursor, statements)
        self.provinces = SqlProvinceRepository(cursor, statements, self._store.routing, self.audit, routing_version)
        self.requests = SqlRequestRepository(cursor, statements)
        self.totals = SqlTotals(cursor, statements.totals)
        self.transfers = SqlTransferRepository(cursor, statements, dialect, sealer, self.audit, self.totals)
        self.outbox = SqlOutboxRepository(cursor, statements, self.totals)
        self.bindings = SqlBindingRepository(cursor, statements, sealer, self.audit)
        self.members = SqlMemberRepository(cursor, statements)
        self.submissions = SqlSubmissionReads(cursor, statements, self.bindings)
        self.quotas = SqlQuotaRepository(cursor, statements.quotas, self.totals, self.audit)
        self.settlements = SqlSettlementRepository(cursor, statements, dialect, self.audit, self.totals)
        self.gateway_keys = SqlGatewayKeyRepository(cursor, statements, dialect, self.audit)
        self.relation_queries = SqlRelationQueryLog(cursor, statements)
        self._after_commit: list[Callable[[], None]] = []
        return self

    def __exit__(self, *exc: object) -> None:
        # A connection lost in use (the database restarted) has no transaction left to end, is never handed out
        # again, nor is one that could not be made writable again.
        lost = getattr(self._connection.driver_connection, "broken", False)
        try:
            if self._open and not lost:
                self._end("ROLLBACK")
        finally:
            usable = not lost and self._writable_again()
            self._cursor.close()
            if not usable:
                self._connection.invalidate()
            self._connection.close()  # back to the pool

    def _writable_again(self) -> bool:
        """The connection back as the pool's others are (SQLite writable, psycopg out of autocommit); False if it
        cannot be (its transaction could not be ended)."""
        try:
            if self._store.is_sqlite:
                if self._read_only:
                    self._cursor.raw("PRAGMA query_only = OFF")
            else:
                self._connection.driver_connection.autocommit = False  # type: ignore[union-attr]
        except Exception:
            return False
        return True

    def _end(self, verb: str) -> None:
        # Still open until the verb succeeds: a COMMIT that fails (in a batch, a statement's failure surfaces at
        # the COMMIT and leaves the transaction aborted, not ended) is rolled back on leaving, and the connection
        # goes back to the pool ready for the next unit of work.
        if self._store.is_sqlite:
            # SQLite may have ended the transaction itself (after SQLITE_BUSY in a statement, say): a ROLLBACK
            # then would fail and hide the error that ended it.
            if verb == "COMMIT" or self._connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
                self._cursor.raw(verb)
        elif verb == "COMMIT":
            with contention(self._connection.driver_connection):
                self._connection.commit()
        else:
            self._connection.rollback()
        self._open = False

    def commit(self) -> None:
        # The call's answer and its transfers' events first (rows of their own), then the rows every writer
        # shares, last and in one order: the totals, then the audit chain's head. Every audited commit queues on
        # the head's row, so it is held for as little as can be: on PostgreSQL the answer, the events, the totals,
        # the chain's entries (chained by the database, repositories/audit.py) and the COMMIT go in one batch,
        # one round trip, and the shared rows are locked only while the database runs its end, never while an
        # answer travels to the gateway and back. The COMMIT is sent as a statement of the batch, so the batch's
        # closing Sync is its round trip (the driver's commit() would sync once and the batch's end again). A
        # COMMIT alone is one round trip already: batching it would gain nothing.
        if not self._store.is_sqlite and (self._cursor.has_later or self.totals.unflushed()
                                          or self.audit.unflushed()):
            with self._cursor.batched():
                self._write_what_waits()
                self._cursor.raw("COMMIT")
            self._open = False  # once the batch has ended without error: the COMMIT is then known done
        else:
            self._write_what_waits()
            self._end("COMMIT")
        actions, self._after_commit = self._after_commit, []
        if self.outbox.claimable:
            self.outbox.claimable = False
            actions.append(self._store.claimable_committed)
        for action in actions:
            try:
                action()
            except Exception:  # committed all the same: the caller must hear so, not an error
                log.exception("an action after a commit failed")

    def flush(self) -> None:
        """Write now what waits for the commit (the call's answer, its transfers' events): the commit does it."""
        self._cursor.write_later()

    def _write_what_waits(self) -> None:
        self.flush()
        self.totals.flush()
        self.audit.flush()

    def after_commit(self, action: Callable[[], None]) -> None:
        self._after_commit.append(action)
