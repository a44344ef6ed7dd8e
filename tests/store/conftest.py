"""The store tests' database: a fresh SQLite file or PostgreSQL database, made by the migrations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from gateway.security.encryption import FieldCipher
from gateway.store.schema import upgrade
from gateway.store.sql import make_engine, use_sealer


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """The schema as the gateway gets it (`gongji db upgrade`), with a throwaway key for sealed values."""
    engine = make_engine(db_url)
    upgrade(engine)
    use_sealer(engine, FieldCipher.generate())
    yield engine
    engine.dispose()
