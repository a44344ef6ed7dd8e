"""Fixtures of the crash and fault tests: teardown that stops every process, a printed seed, PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import pytest

from tests.support import fresh_postgres_database


@pytest.fixture
def closing() -> Iterator[contextlib.ExitStack]:
    """Register teardown here (deployment.close, driver.close, proxy.close): it runs even when a test fails."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """Random timings from a printed seed; GONGJI_CRASH_SEED=N replays a run's choices."""
    value = int(os.environ.get("GONGJI_CRASH_SEED") or random.SystemRandom().randrange(1, 2**31))
    print(f"\n{request.node.name}: seed={value} (GONGJI_CRASH_SEED={value} repeats these choices)")
    return value


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432 (as tests/conftest.py makes them), dropped afterwards."""
    yield from fresh_postgres_database("gongji_crash", "the two-gateway test skipped")
