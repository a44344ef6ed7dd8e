"""The outbox loop, a driver beside app.py: sends due messages to provinces concurrently, records the answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from gateway.usecases.audit import checkpoint_audit
from gateway.usecases.context import UseCaseContext
from gateway.usecases.outbox import claim_outbox_work, record_outbox_results, release_unsent, sweep_deadlines
from gateway.usecases.outbox_ports import Backoff, OutboxSender, OutboxWork
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
    def __init__(self, ctx: UseCaseContext, sender: OutboxSender, run_in_db: RunInDb,
                 settings: OutboxSettings) -> None:
        self._ctx = ctx
        self._sender = sender
        self._run_in_db = run_in_db
        self._settings = settings
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.batches_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._main: asyncio.Task[None] | None = None
        # Deadline sweeps completed: lets a test wait for sweeps after moving the clock, not guess a delay.
        self.sweeps_done = 0
        # Messages the use cases handed over at their commit (usecases/handoff.py), with the loop time by
        # which to send them: half their lease, so none is sent after another gateway could claim it.
        self._handed: deque[tuple[float, OutboxWork]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # Messages sent as handed over at their commit, and as found by a claim (retries, other kinds).
        self.sent_handed = self.sent_claimed = 0

    @property
    def sent(self) -> tuple[int, int]:
        """Messages sent (attempts): (handed over at their commit, found by a claim)."""
        return self.sent_handed, self.sent_claimed

    def wake(self) -> None:
        """Called after a use case enqueued something, so it goes out now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._main = self._loop.create_task(self._run(), name="outbox")
        self._ctx.handoff.attach(self._take, self._has_room, timedelta(seconds=self._settings.lease_seconds))

    def _has_room(self) -> bool:
        # More would wait for slots past their lease; the claim finds them when they are due instead.
        return len(self._handed) < self._settings.batch_size * self._settings.batches_in_flight * 4

    def _take(self, work: OutboxWork) -> None:
        """A message handed over at a commit, on the loop's thread (SQLite) or a database thread."""
        assert self._loop is not None
        self._handed.append((self._loop.time() + self._settings.lease_seconds / 2, work))
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed: the next poll or process sends it
                self._loop.call_soon_threadsafe(self._wake.set)

    def _take_handed(self, now: float) -> list[OutboxWork]:
        work: list[OutboxWork] = []
        while self._handed and len(work) < self._settings.batch_size:
            send_by, item = self._handed.popleft()
            if now < send_by:
                work.append(item)
            # else: too late to send it under its lease; the claim takes it once the lease ends
        return work

    async def stop(self) -> None:
        self._ctx.handoff.detach()
        self._stopping = True
        self._wake.set()
        if self._main is not None:
            await self._main
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._handed:
            unsent = [work.message.id for _, work in self._handed]
            self._handed.clear()
            try:
                await self._run_in_db(release_unsent, self._ctx, unsent)
            except Exception:  # their leases run out instead: sent later, not lost
                log.exception("releasing %d handed-over messages failed", len(unsent))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = next_claim = 0.0
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
            if self._stopping:  # no new sends once stopping; what was handed over is given back in stop()
                self._slots.release()
                break
            self._wake.clear()
            work = self._take_handed(loop.time())
            self.sent_handed += len(work)
            # The claim finds everything else: retries, messages of other kinds or other processes, leases
            # run out. Under a steady flow of handed-over messages it still runs every poll interval.
            if not work or loop.time() >= next_claim:
                next_claim = loop.time() + self._settings.poll_interval_seconds
                try:
                    claimed = await self._run_in_db(claim_outbox_work, self._ctx, self._settings.batch_size,
                                                    timedelta(seconds=self._settings.lease_seconds))
                except Exception:
                    log.exception("claiming outbox messages failed; retrying")
                    claimed = []
                self.sent_claimed += len(claimed)
                work += claimed
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
            results = await asyncio.gather(*(self._sender.send(item) for item in work))
            await self._run_in_db(record_outbox_results, self._ctx, list(zip(work, results, strict=True)),
                                  self._settings.backoff)
        except Exception:
            # The lease expires and the messages are retried; nothing is lost.
            log.exception("recording an outbox batch failed")
        finally:
            self._slots.release()
            if len(work) >= self._settings.batch_size or self._handed:
                self._wake.set()  # more is probably waiting
