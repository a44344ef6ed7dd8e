"""Throwaway databases on the machine's PostgreSQL (127.0.0.1:5432, trust auth), for tests and benchmarks."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator


def admin_url() -> str | None:
    """A URL of the local PostgreSQL's `test` database (user postgres or root), or None if it cannot be reached."""
    import psycopg

    for user in ("postgres", "root"):
        url = f"postgresql://{user}@127.0.0.1:5432/test"
        with contextlib.suppress(psycopg.OperationalError), psycopg.connect(url, connect_timeout=3):
            return url
    return None


@contextlib.contextmanager
def scratch_database(admin: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database named `prefix`_<random>, empty or a copy of the database `template` (which nothing may be
    connected to), its URL yielded, dropped afterwards (whatever is connected)."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copied = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copied}')
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
