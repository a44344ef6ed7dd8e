"""The store tests' database: a fresh SQLite file or PostgreSQL database, made by the migrations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from gateway.security.encryption import FieldCipher
from gateway.store.engine import make_engine
from gateway.store.schema import upgrade
from gateway.store.unit_of_work import SqlStore


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """The schema as the gateway gets it (`gongji db upgrade`)."""
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> SqlStore:
    """The store on that database, with a throwaway key for sealed values."""
    return SqlStore(engine, FieldCipher.generate())
