"""A lock another connection holds: DatabaseBusy after the thread's wait (none on the event loop's thread), the
connection back in the pool, and the write probe says so; deadlocks stay Contention (test_contention.py)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import date

import pytest

from gateway.domain.errors import DatabaseBusy
from gateway.security.encryption import FieldCipher
from gateway.store.engine import make_engine
from gateway.store.probe import WriteProbe
from gateway.store.schema import upgrade
from gateway.store.unit_of_work import SqlStore, SqlUnitOfWork

WAIT_S = 0.5


@contextlib.contextmanager
def held(db_url: str) -> Iterator[None]:
    """Another connection holds what a write needs: SQLite's write lock, or the transfers table on PostgreSQL."""
    if db_url.startswith("sqlite"):
        connection = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        connection = psycopg.connect(db_url)  # type: ignore[assignment]
        connection.execute("LOCK TABLE transfers IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        connection.rollback()
        connection.close()


@pytest.fixture
def waiting_store(db_url: str) -> Iterator[SqlStore]:
    """A store whose connections wait WAIT_S for a lock, as the gateway makes it (app.py _core)."""
    engine = make_engine(db_url, lock_wait_seconds=WAIT_S)
    upgrade(engine)
    yield SqlStore(engine, FieldCipher.generate())
    engine.dispose()


def _write(store: SqlStore) -> None:
    with SqlUnitOfWork(store) as uow:
        uow.transfers.exists("t-locks")  # PostgreSQL: the lock is met at the first statement on the table
        uow.commit()


def test_a_held_lock_is_database_busy_after_the_wait_and_nothing_is_held_after(waiting_store: SqlStore,
                                                                               db_url: str) -> None:
    with held(db_url):
        started = time.monotonic()
        with pytest.raises(DatabaseBusy) as error:
            _write(waiting_store)
        waited = time.monotonic() - started
    assert error.value.reason == "DATABASE_BUSY"
    assert waited >= WAIT_S * 0.9, "a thread of its own waits for the lock a while"
    assert waiting_store.engine.pool.checkedout() == 0, "the connection went back to the pool"  # type: ignore[attr-defined]
    _write(waiting_store)  # released: the same work goes through


def test_a_lock_met_by_reads_sent_together_is_database_busy_and_the_connection_serves_again(
        waiting_store: SqlStore, db_url: str) -> None:
    """A submission's facts go to PostgreSQL in one batch (pipeline mode): the lock met by its first read ends the
    batch with DatabaseBusy, not a broken connection."""
    def read_facts() -> bool:
        with SqlUnitOfWork(waiting_store) as uow:
            return uow.submissions.read("t-locks", b"\x01" * 32, "650000", b"\x02" * 32, "620000",
                                        date(2026, 5, 1), "b-locks").transfer_id_taken

    with held(db_url), pytest.raises(DatabaseBusy):
        read_facts()
    assert waiting_store.engine.pool.checkedout() == 0, "the connection went back to the pool"  # type: ignore[attr-defined]
    assert read_facts() is False
    _write(waiting_store)


def test_on_the_event_loops_thread_sqlite_does_not_wait(waiting_store: SqlStore, db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's use cases run on threads of their own (GONGJI_DB_THREADS)")
    loop_engine = make_engine(db_url, lock_wait_seconds=0)
    waiting_store.loop_uses(loop_engine)  # this thread is the event loop's
    try:
        with held(db_url):
            started = time.monotonic()
            with pytest.raises(DatabaseBusy):
                _write(waiting_store)
            assert time.monotonic() - started < WAIT_S / 2, "failed at once: the runner waits, off the loop"
            # Another thread (the HTTP port's, say) still waits its while, as the engine's direct users do.
            waited: list[float] = []

            def elsewhere() -> None:
                started = time.monotonic()
                with contextlib.suppress(DatabaseBusy):
                    _write(waiting_store)
                waited.append(time.monotonic() - started)

            thread = threading.Thread(target=elsewhere)
            thread.start()
            thread.join(10)
            assert waited and waited[0] >= WAIT_S * 0.9
        assert loop_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        _write(waiting_store)
    finally:
        loop_engine.dispose()


def test_the_write_probe_sees_the_lock(waiting_store: SqlStore, db_url: str) -> None:
    probe = WriteProbe(db_url, WAIT_S)
    try:
        assert probe() is True
        with held(db_url):
            assert probe() is False
        assert probe() is True
    finally:
        probe.close()


def test_writes_the_gateway_began_meanwhile_prove_sqlite_writable(waiting_store: SqlStore, db_url: str) -> None:
    """SQLite does not queue its lock's waiters: under a heavy load of the gateway's own writes the probe may never
    catch it free, yet the database is plainly writable."""
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL queues lock waiters in turn: the probe gets its turn")
    writes = iter(range(100))
    probe = WriteProbe(db_url, 0.1, lambda: next(writes))
    try:
        with held(db_url):
            assert probe() is True  # another write began while it waited
        still = WriteProbe(db_url, 0.1, lambda: 7)
        try:
            with held(db_url):
                assert still() is False  # none did: busy
        finally:
            still.close()
    finally:
        probe.close()
