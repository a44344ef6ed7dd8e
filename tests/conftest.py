"""Shared fixtures: an event loop thread for the async servers, databases, and a running stack."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.engine import make_engine
from gateway.store.schema import upgrade
from tests.support import (
    LoopThread,
    Stack,
    fresh_postgres_database,
    start_stack,
)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def _postgres_database() -> Iterator[str]:
    yield from fresh_postgres_database("gongji_test", "PostgreSQL tests skipped")


@functools.cache
def _migrated_sqlite() -> Path:
    """A SQLite file at the schema's head, made once a process: each test's database is a copy of it."""
    path = Path(tempfile.mkdtemp(prefix="gongji-schema-")) / "gongji.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # the last connection's close checkpoints the log into the file
    atexit.register(shutil.rmtree, path.parent, True)
    return path


@functools.cache
def _migrated_postgres() -> str:
    """A PostgreSQL database at the schema's head, made once a process (nothing stays connected to it): each test's
    database is a copy of it. Dropped when the process ends."""
    made = fresh_postgres_database("gongji_schema", "PostgreSQL tests skipped")
    url = next(made)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    atexit.register(lambda: next(made, None))
    return url.rsplit("/", 1)[1]


def empty_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'gongji.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at the schema's head, as `gongji db upgrade` leaves it (a copy of one the migrations made
    once a process): a SQLite file, and a new PostgreSQL database. Tests of the migrations themselves take
    `empty_database`."""
    if request.param == "sqlite":
        shutil.copyfile(_migrated_sqlite(), tmp_path / "gongji.db")
        yield f"sqlite:///{tmp_path / 'gongji.db'}"
    else:
        _migrated_postgres()  # skips or fails here, as every PostgreSQL test does, when it is unreachable
        yield from fresh_postgres_database("gongji_test", "PostgreSQL tests skipped", template=_migrated_postgres())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gongji.db'}"


@pytest.fixture
def stack(loop_thread: LoopThread, tmp_path: Path, db_url: str) -> Iterator[Stack]:
    """Gateway with Xinjiang 650000 and Gansu 620000 stub provinces, all on 127.0.0.1:0, on each database."""
    running = start_stack(loop_thread, tmp_path, db_url)
    yield running
    running.close()
