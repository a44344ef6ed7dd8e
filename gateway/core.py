"""The gateway's core, composed once per process: the store, the keys, the use cases' context, and where they run."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from gateway.api.ratelimit import ProvinceRateLimits
from gateway.api.receipts import SignedReceiptIssuer
from gateway.config import Settings
from gateway.database_watch import PROBE_WAIT_SECONDS, DatabaseWatch
from gateway.domain.clock import Clock
from gateway.domain.envelope import GATEWAY
from gateway.provinces.client import ProvinceClient
from gateway.security.encryption import load_or_create_keys
from gateway.security.hashing import HmacPersonHasher, load_or_create_secret
from gateway.security.keys import ensure_key_pair, public_bytes
from gateway.security.signing import EnvelopeSigner, verify_signature
from gateway.store.engine import make_engine
from gateway.store.probe import WriteProbe
from gateway.store.schema import ensure_known_schema
from gateway.store.unit_of_work import SqlStore
from gateway.usecases.context import StoredPayloadTypes, UseCaseContext
from gateway.usecases.runner import waiting_out_locks
from protos.gongji.v1 import payload_types

# The payload types the use cases store and read back (the instruction and proposal as received, the figures).
STORED_PAYLOAD_TYPES = StoredPayloadTypes(instruction=payload_types.TRANSFER_INSTRUCTION,
                                          proposal=payload_types.BINDING_PROPOSAL,
                                          figures=payload_types.SETTLEMENT_FIGURES)
# Threads for the operators' calls: two, so one long read does not queue the next operator behind it.
OPERATOR_THREADS = 2


@dataclass
class Core:
    """What the gateway's server and its outbox dispatcher both need."""

    engine: Engine
    store: SqlStore
    signer: EnvelopeSigner
    context: UseCaseContext
    run_in_db: Callable[..., Awaitable[Any]]  # for the gateway's own work (the outbox, the stop)
    run_call: Callable[..., Awaitable[Any]]  # for the calls: its refusals are counted by the watch
    run_for_operators: Callable[..., Awaitable[Any]]  # the operators' calls, on threads of their own
    executor: ThreadPoolExecutor | None
    operators_executor: ThreadPoolExecutor
    client: ProvinceClient
    public_key: bytes  # of the gateway's current signing key
    watch: DatabaseWatch
    probe: WriteProbe
    loop_engine: Engine | None  # SQLite's connections for use cases run on the event loop: they never wait

    def run_inline_from_here(self) -> None:
        """Once started: use cases run on this (the event loop's) thread never wait inside SQLite for a lock."""
        if self.loop_engine is not None:
            self.store.loop_uses(self.loop_engine)

    async def close(self) -> None:
        await self.watch.stop()
        self.probe.close()
        await self.client.close()
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.operators_executor.shutdown(wait=True)
        self.engine.dispose()
        if self.loop_engine is not None:
            self.loop_engine.dispose()


def build_core(settings: Settings, clock: Clock) -> Core:
    sqlite = settings.database_url.startswith("sqlite")
    # A statement waits this long at most for a lock another connection holds (on the loop's thread, see below).
    engine = make_engine(settings.database_url, settings.sqlite_synchronous,
                         lock_wait_seconds=settings.database_busy_seconds)
    store = SqlStore(engine, load_or_create_keys(settings.data_key_file))
    try:
        ensure_known_schema(engine, auto_upgrade=settings.auto_migrate)
    except Exception:
        engine.dispose()
        raise
    private_key = ensure_key_pair(settings.gateway_key_file, settings.gateway_public_key_file)
    signer = EnvelopeSigner(GATEWAY, settings.gateway_key_id, private_key)
    client = ProvinceClient(signer, clock, settings.province_call_timeout_seconds, settings.tls_files)
    context = UseCaseContext(
        uow=store.unit_of_work,
        clock=clock,
        receipts=SignedReceiptIssuer(signer),
        hasher=HmacPersonHasher(load_or_create_secret(settings.id_hash_key_file)),
        verify=verify_signature,
        members=client,  # CheckMember, for VerifyRelation and ProposeBinding
        stored_types=STORED_PAYLOAD_TYPES,
        # Each province's calls are counted once they are proven its own (see ProvinceRateLimits).
        admit=ProvinceRateLimits(settings.rate_limit_per_second, settings.rate_limit_burst, clock).admit,
        admit_relation_query=ProvinceRateLimits(settings.relation_query_rate_per_second, settings.relation_query_burst,
                                                clock, counted="relation queries").admit,
        max_clock_skew=timedelta(seconds=settings.max_clock_skew_seconds),
        settlement=settings.settlement,
    )
    loop = asyncio.get_running_loop()
    executor = None
    if settings.db_threads == 0:
        # SQLite: one writer, local file, statements in microseconds. Running use cases on the event
        # loop itself avoids a thread hop and GIL hand-over per call, which cost more than the work.
        # A lock held by another connection fails an attempt at once instead (see waiting_out_locks).
        async def run_once(use_case: Any, *args: Any) -> Any:
            return use_case(*args)
    else:
        executor = ThreadPoolExecutor(max_workers=settings.db_threads, thread_name_prefix="db")

        def run_once(use_case: Any, *args: Any) -> asyncio.Future[Any]:  # type: ignore[misc]
            return loop.run_in_executor(executor, functools.partial(use_case, *args))

    probe = WriteProbe(settings.database_url, PROBE_WAIT_SECONDS,
                       (lambda: store.writes_begun) if sqlite else None)
    watch = DatabaseWatch(probe, settings.database_busy_seconds)
    run_in_db = waiting_out_locks(run_once, settings.database_busy_seconds)
    run_call = waiting_out_locks(run_once, settings.database_busy_seconds, watch.count_refusal)
    # Operators' calls never run on the provinces' event loop nor take their threads: a page of a thousand
    # transfers decrypted, a window closed or a watch catching up must not hold up a province's call. Their
    # threads wait for a lock as any thread does (on SQLite inside its busy handler, off the loop).
    operators_executor = ThreadPoolExecutor(max_workers=OPERATOR_THREADS, thread_name_prefix="ops")

    def run_for_operator(use_case: Any, *args: Any) -> asyncio.Future[Any]:
        return loop.run_in_executor(operators_executor, functools.partial(use_case, *args))

    run_for_operators = waiting_out_locks(run_for_operator, settings.database_busy_seconds, watch.count_refusal)
    loop_engine = make_engine(settings.database_url, settings.sqlite_synchronous, lock_wait_seconds=0) \
        if sqlite and settings.db_threads == 0 else None
    return Core(engine, store, signer, context, run_in_db, run_call, run_for_operators, executor, operators_executor,
                 client, public_bytes(private_key),
                 watch, probe, loop_engine)


