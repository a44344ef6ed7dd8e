"""Shared fixtures: an event loop thread for the async servers, databases, and a running stack."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    LoopThread,
    Stack,
    postgres_admin_url,
    start_stack,
)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def _postgres_database() -> Iterator[str]:
    admin_url = postgres_admin_url()
    if admin_url is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is unreachable, and CI=true requires it")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is unreachable; PostgreSQL tests skipped (they run when CI=true)")
    import psycopg

    name = f"gongji_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, and a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gongji.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gongji.db'}"


@pytest.fixture
def stack(loop_thread: LoopThread, tmp_path: Path, db_url: str) -> Iterator[Stack]:
    """Gateway with Xinjiang 650000 and Gansu 620000 stub provinces, all on 127.0.0.1:0, on each database."""
    running = start_stack(loop_thread, tmp_path, db_url)
    yield running
    running.close()
