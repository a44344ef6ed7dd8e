"""Shared fixtures: an event loop thread for the async servers, databases, and a running stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    DATABASES,
    LoopThread,
    Stack,
    migrated_database,
    start_stack,
)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at the schema's head (`migrated_database`): a SQLite file, and a new PostgreSQL database.
    Tests of the migrations themselves start from `empty_database`."""
    yield from migrated_database(request.param, tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gongji.db'}"


@pytest.fixture
def stack(loop_thread: LoopThread, tmp_path: Path, db_url: str) -> Iterator[Stack]:
    """Gateway with Xinjiang 650000 and Gansu 620000 stub provinces, all on 127.0.0.1:0, on each database."""
    running = start_stack(loop_thread, tmp_path, db_url)
    yield running
    running.close()
