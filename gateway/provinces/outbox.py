"""The outbox loop: sends due messages to provinces concurrently and records the answers durably."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from gateway.provinces.client import ProvinceClient
from gateway.usecases.audit import checkpoint_audit
from gateway.usecases.context import UseCaseContext
from gateway.usecases.outbox import Backoff, claim_outbox_work, record_outbox_results, sweep_deadlines
from gateway.usecases.settlements import close_due_windows

log = logging.getLogger(__name__)
T = TypeVar("T")
RunInDb = Callable[..., Awaitable[Any]]
IDLE_POLL_START_SECONDS = 0.002


@dataclass(frozen=True)
class OutboxSettings:
    batch_size: int = 64
    batches_in_flight: int = 4
    poll_interval_seconds: float = 0.25
    sweep_interval_seconds: float = 0.5
    lease_seconds: float = 30.0
    # How often the audit chain's head is signed (a checkpoint), when it has grown.
    checkpoint_interval_seconds: float = 60.0
    backoff: Backoff = field(default_factory=Backoff)


class OutboxWorker:
    def __init__(self, ctx: UseCaseContext, client: ProvinceClient, run_in_db: RunInDb,
                 settings: OutboxSettings) -> None:
        self._ctx = ctx
        self._client = client
        self._run_in_db = run_in_db
        self._settings = settings
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.batches_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._main: asyncio.Task[None] | None = None
        # Deadline sweeps completed: lets a test wait for sweeps after moving the clock, not guess a delay.
        self.sweeps_done = 0

    def wake(self) -> None:
        """Called after a use case enqueued something, so it goes out now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._main = asyncio.get_running_loop().create_task(self._run(), name="outbox")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._main is not None:
            await self._main
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        next_checkpoint = loop.time() + self._settings.checkpoint_interval_seconds
        idle_wait = 0.0
        while not self._stopping:
            if loop.time() >= next_checkpoint:
                try:
                    await self._run_in_db(checkpoint_audit, self._ctx)
                except Exception:
                    log.exception("audit checkpoint failed; retrying")
                next_checkpoint = loop.time() + self._settings.checkpoint_interval_seconds
            if loop.time() >= next_sweep:
                try:
                    await self._run_in_db(sweep_deadlines, self._ctx)
                    # Windows due on schedule: the figures they queue are claimed just below.
                    await self._run_in_db(close_due_windows, self._ctx)
                    self.sweeps_done += 1
                except Exception:
                    log.exception("deadline sweep failed; retrying")
                next_sweep = loop.time() + self._settings.sweep_interval_seconds
            await self._slots.acquire()
            self._wake.clear()
            try:
                work = await self._run_in_db(claim_outbox_work, self._ctx, self._settings.batch_size,
                                             timedelta(seconds=self._settings.lease_seconds))
            except Exception:
                log.exception("claiming outbox messages failed; retrying")
                work = []
            if work:
                idle_wait = 0.0
                task = loop.create_task(self._send_batch(work))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            self._slots.release()
            # Idle: wait for a wake-up (same process) or poll, backing off to poll_interval_seconds so a
            # dispatcher in its own process answers fast under load and costs little when idle.
            idle_wait = min(self._settings.poll_interval_seconds, max(idle_wait * 2, IDLE_POLL_START_SECONDS))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle_wait)
            continue

    async def _send_batch(self, work: list[Any]) -> None:
        try:
            results = await asyncio.gather(*(self._client.send(item) for item in work))
            await self._run_in_db(record_outbox_results, self._ctx, list(zip(work, results, strict=True)),
                                  self._settings.backoff)
        except Exception:
            # The lease expires and the messages are retried; nothing is lost.
            log.exception("recording an outbox batch failed")
        finally:
            self._slots.release()
            if len(work) == self._settings.batch_size:
                self._wake.set()  # a full batch: more is probably waiting
