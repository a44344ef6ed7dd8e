"""Transactions that interleave: a deadlock becomes Contention, which the gateway retries, boundedly;
gateways starting together register one key and one routing table; a change that commits late is still
watched in its place."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from gateway.core import STORED_PAYLOAD_TYPES
from gateway.domain.clock import SystemClock
from gateway.domain.errors import Contention
from gateway.domain.settlement import SettlementPeriod, window_containing
from gateway.store.unit_of_work import SqlStore, SqlUnitOfWork
from gateway.usecases.context import UseCaseContext
from gateway.usecases.runner import CONTENTION_ATTEMPTS, UseCaseRunner


def store_context(store: SqlStore) -> UseCaseContext:
    """The use cases' context on `store` for use cases that only read and write the store (start-up,
    watching): receipts, hashing, signatures and the provinces are not theirs, and fail the test if called."""
    def unused(*_: Any) -> Any:
        raise AssertionError("a store-only use case signed, hashed or verified")

    return UseCaseContext(uow=store.unit_of_work, clock=SystemClock(), receipts=unused,  # type: ignore[arg-type]
                          hasher=unused, verify=unused, members=unused,
                          stored_types=STORED_PAYLOAD_TYPES)  # type: ignore[arg-type]


@pytest.fixture
def pg_store(store: SqlStore, db_url: str) -> SqlStore:
    if db_url.startswith("sqlite"):
        # SQLite takes its write lock at BEGIN IMMEDIATE, before any statement: two transactions wait in
        # line (busy timeout), never deadlock, and commit in the order they began. Only PostgreSQL
        # interleaves writers (a deadlock, a change committed after a later-numbered one).
        pytest.skip("interleaved writers need PostgreSQL (this test runs there)")
    return store


def test_a_deadlock_becomes_contention_and_changes_nothing(pg_store: SqlStore) -> None:
    store = pg_store
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    first = window_containing(now - timedelta(days=40), SettlementPeriod.DAILY)
    second = window_containing(now - timedelta(days=39), SettlementPeriod.DAILY)
    with SqlUnitOfWork(store) as uow:  # both windows exist
        uow.settlements.state_for_close(first, now)
        uow.settlements.state_for_close(second, now)
        uow.commit()
    both_hold_one = threading.Barrier(2)
    outcomes: dict[str, Any] = {}

    def lock_in_order(name: str, order: tuple[str, str]) -> None:
        try:
            with SqlUnitOfWork(store) as uow:
                uow.settlements.lock(order[0])
                both_hold_one.wait(10)
                uow.settlements.lock(order[1])  # each waits for the other: PostgreSQL breaks the cycle
                uow.commit()
            outcomes[name] = "committed"
        except Contention as error:
            outcomes[name] = error

    threads = [threading.Thread(target=lock_in_order, args=("a", (first.window_id, second.window_id))),
               threading.Thread(target=lock_in_order, args=("b", (second.window_id, first.window_id)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(type(v).__name__ if isinstance(v, Exception) else v for v in outcomes.values()) == [
        "Contention", "committed"]
    refused = next(v for v in outcomes.values() if isinstance(v, Contention))
    assert refused.reason == "CONTENTION" and getattr(refused.__cause__, "sqlstate", "") == "40P01"


def test_the_runner_retries_contention_a_bounded_number_of_times() -> None:
    attempts = {"n": 0}

    def flaky(ctx: object, fail_times: int) -> str:
        attempts["n"] += 1
        if attempts["n"] <= fail_times:
            raise Contention("deadlock")
        return "done"

    async def inline(use_case: Any, *args: Any) -> Any:
        return use_case(*args)

    runner = UseCaseRunner(object(), inline)  # type: ignore[arg-type]
    assert asyncio.run(runner.change(flaky, CONTENTION_ATTEMPTS - 1)) == "done"
    assert attempts["n"] == CONTENTION_ATTEMPTS
    attempts["n"] = 0
    with pytest.raises(Contention):
        asyncio.run(runner.query(flaky, CONTENTION_ATTEMPTS))
    assert attempts["n"] == CONTENTION_ATTEMPTS  # then the caller is told (ABORTED / CONTENTION)


def test_gateways_starting_together_register_their_key_and_the_manifest_once(store: SqlStore) -> None:
    """Several gateways on one database start at the same moment with the same key and manifest (make
    test-crash's two gateways do): one registers each, the others find it; none fails on a unique key."""
    from datetime import timedelta

    from gateway.domain.provinces import Policy, Province, ProvinceKey, ProvinceStatus
    from gateway.usecases.keys import gateway_keys, register_gateway_key
    from gateway.usecases.provinces import apply_manifest, list_provinces

    ctx = store_context(store)
    public_key = bytes(range(32))
    code = "110000"  # the database is new for each test
    manifest = [Province(code, "北京", "127.0.0.1:1", ProvinceStatus.ACTIVE,
                         keys=(ProvinceKey(f"{code}-k1", public_key, "ed25519", None, None),), policy=Policy())]
    starters = 6
    barrier = threading.Barrier(starters, timeout=10)
    failures: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            register_gateway_key(ctx, "gateway-race", public_key, timedelta(days=7))
            apply_manifest(ctx, manifest)
        except BaseException as error:  # collected for the assertion below
            failures.append(error)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    [key] = [k for k in gateway_keys(ctx) if k.key_id == "gateway-race"]
    assert (key.public_key, key.valid_until) == (public_key, None)
    assert [p.code for p in list_provinces(ctx) if p.code == code] == [code]


def test_a_change_that_commits_late_is_still_watched_in_its_place(pg_store: SqlStore) -> None:
    """PostgreSQL numbers a change when it is written: a transaction that waits (here 6 s, on anything)
    before committing leaves a gap that later changes pass. The watcher waits until every transaction
    running when it saw the gap has ended, then reads again: nothing is skipped, nothing out of order."""
    import time
    import uuid
    from collections.abc import Callable
    from datetime import UTC, datetime, timedelta

    from gateway.domain.envelope import Envelope
    from gateway.domain.monitoring import FeedStart
    from gateway.domain.transfers import Transfer, TransferState
    from gateway.usecases.monitoring import watch_transfers

    store = pg_store

    ctx = store_context(store)
    now = datetime.now(UTC)
    ids = [f"tr-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    with SqlUnitOfWork(store) as uow:
        for transfer_id in ids:
            uow.transfers.add(Transfer(transfer_id=transfer_id, state=TransferState.RECEIVED, giver_province="650000",
                                       receiver_province="620000", giver_id_masked="650502********1230",
                                       receiver_id_masked="620102********0026", amount_fen=100, currency="CNY",
                                       created_at=now, updated_at=now, return_deadline=now + timedelta(hours=1),
                                       delivery_deadline=now + timedelta(minutes=1), instruction_sha256=b"\x00" * 32),
                              b"\x01" * 32, b"\x02" * 32,
                              Envelope(b"p", "gongji.v1.TransferInstruction", "650000", "k", "ed25519", b"\x00" * 64))
        uow.commit()
    with SqlUnitOfWork(store, read_only=True) as uow:
        start = uow.transfers.last_change()  # after the two transfers' own events, written at their commit
    seen: list[tuple[int, str]] = []

    async def run_in_db(function: Callable[..., Any], *args: Any) -> Any:
        return function(*args)

    async def watch() -> None:
        async for change in watch_transfers(ctx, run_in_db, str(start)):
            if isinstance(change, FeedStart):
                assert change.position == start
                continue
            seen.append((change.position, change.transfer_id))
            if len(seen) == 2:
                return

    watcher = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(watch(), 60)))
    watcher.start()
    with SqlUnitOfWork(store) as slow:
        slow.transfers.add_event(ids[0], TransferState.DELIVERED, "", now)
        slow.flush()  # written (numbered) first, committed last

        def quick() -> None:
            with SqlUnitOfWork(store) as uow:
                uow.transfers.add_event(ids[1], TransferState.DELIVERED, "", now)
                uow.commit()

        other = threading.Thread(target=quick)
        other.start()
        other.join(10)
        time.sleep(6)  # longer than any fixed grace a watcher might give a gap
        assert seen == []  # the committed later change waits behind the gap
        slow.commit()
    watcher.join(30)
    assert [transfer_id for _, transfer_id in seen] == ids
    assert [position for position, _ in seen] == [start + 1, start + 2]
