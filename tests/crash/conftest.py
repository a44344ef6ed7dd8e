"""Fixtures of the crash and fault tests: teardown that stops every process, a printed seed, PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from collections.abc import Iterator

import pytest

from tests.support import postgres_admin_url


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
    admin_url = postgres_admin_url()
    if admin_url is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is unreachable, and CI=true requires it")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is unreachable; the two-gateway test skipped (it runs when CI=true)")
    import psycopg

    name = f"gongji_crash_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
