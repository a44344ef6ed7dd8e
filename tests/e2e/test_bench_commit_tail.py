"""`python -m bench.commit_tail` in brief: each way commits, and every commit's audit entry is chained in order,
whichever way chained it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.commit_tail import WAYS, run
from gateway.security.encryption import FieldCipher
from gateway.security.signing import verify_signature
from gateway.store.engine import make_engine
from gateway.store.unit_of_work import SqlStore
from gateway.usecases.audit import verify_audit
from tests.support import fresh_postgres_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from fresh_postgres_database("gongji_test", "the commit-tail bench needs PostgreSQL")


@pytest.mark.postgres
def test_each_way_commits_and_every_entry_is_chained(pg_url: str) -> None:
    result = run(pg_url, threads=3, seconds=0.5, rounds=1)

    commits = {way: result["rounds_measured"][way][0]["commits"] for way in WAYS}
    assert all(commits.values()), commits
    engine = make_engine(pg_url)
    try:
        store = SqlStore(engine, FieldCipher.generate())
        report = verify_audit(store.unit_of_work, {}, verify_signature)
    finally:
        engine.dispose()
    assert report.ok, report.findings
    assert report.entries == sum(commits.values())
