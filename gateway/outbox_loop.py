"""The outbox loop, a driver beside app.py: sends due messages to provinces concurrently, records the answers.

Each destination province has its own lane: at most `sends_per_destination` of its messages in flight, claimed
only while its lane has room. A slow or unreachable province fills its own lane and delays only its own
messages; every answer is recorded as it comes (a recorder gathers what is ready into one transaction), so no
message waits for another province's slowest call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from gateway.domain.errors import DatabaseBusy
from gateway.usecases.audit import checkpoint_audit
from gateway.usecases.context import UseCaseContext
from gateway.usecases.outbox import claim_outbox_work, record_outbox_results, release_unsent, sweep_deadlines
from gateway.usecases.outbox_ports import Backoff, OutboxSender, OutboxWork, SendResult
from gateway.usecases.settlements import close_due_windows

log = logging.getLogger(__name__)
T = TypeVar("T")
RunInDb = Callable[..., Awaitable[Any]]
IDLE_POLL_START_SECONDS = 0.002


def _failed(what: str, *args: object) -> None:
    """Log the outbox's own database work failing (it is tried again); a locked database is the database watch's
    to log, once an episode, not each of its refusals."""
    if isinstance(sys.exc_info()[1], DatabaseBusy):
        log.debug(what + ": the database is busy", *args)
    else:
        log.exception(what, *args)


@dataclass(frozen=True)
class OutboxSettings:
    batch_size: int = 64  # messages one claim takes, and answers one recording transaction holds
    sends_per_destination: int = 32  # one province's messages in flight at once
    max_in_flight: int = 256  # all provinces' together
    poll_interval_seconds: float = 0.25
    # A dispatcher process is told of no new message: after a claim that found work it polls again after
    # IDLE_POLL_START_SECONDS, backing off to poll_interval_seconds, so it answers fast under load.
    poll_fast_after_work: bool = False
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
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._main: asyncio.Task[None] | None = None
        self._recorder: asyncio.Task[None] | None = None
        # Deadline sweeps completed: lets a test wait for sweeps after moving the clock, not guess a delay.
        self.sweeps_done = 0
        # Messages the use cases handed over at their commit (usecases/handoff.py), with the loop time by
        # which to send them: half their lease, so none is sent after another gateway could claim it.
        self._handed: deque[tuple[float, OutboxWork]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # Per destination: messages taken (handed over or claimed) and not yet answered; and its lane.
        self._in_flight: Counter[str] = Counter()
        self._lanes: dict[str, asyncio.Semaphore] = {}
        # Messages taken but not sent when the loop stopped, to give back.
        self._unsent: list[int] = []
        # Answers waiting to be recorded, and what wakes the recorder.
        self._answers: list[tuple[OutboxWork, SendResult]] = []
        self._answered = asyncio.Event()
        # Messages sent as handed over at their commit, and as found by a claim (retries, other kinds).
        self.sent_handed = self.sent_claimed = 0
        # Claim transactions made. Only when something may be waiting that no hand-off brought: a commit said it
        # queued a message for the claim (wake), a lane the last claim skipped as full has room again, the last
        # claim filled its batch; else at the poll (see poll_fast_after_work). Under a steady flow of handed-over
        # messages, one a poll interval.
        self.claims = 0
        self._claim_wanted = True
        self._claim_gap = settings.poll_interval_seconds
        self._skipped: frozenset[str] = frozenset()  # the destinations whose lanes the last claim found full

    @property
    def sent(self) -> tuple[int, int]:
        """Messages sent (attempts): (handed over at their commit, found by a claim)."""
        return self.sent_handed, self.sent_claimed

    def wake(self) -> None:
        """From any thread, after a commit that queued messages only a claim finds: claim them now rather than at
        the next poll. Before the loop starts (or in a gateway whose outbox runs in dispatcher processes), nothing
        to do: a started loop's first claim finds them."""
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._want_claim()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed: a gateway's next claim finds them
                self._loop.call_soon_threadsafe(self._want_claim)

    def _want_claim(self) -> None:
        self._claim_wanted = True
        self._wake.set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._main = self._loop.create_task(self._run(), name="outbox")
        self._recorder = self._loop.create_task(self._record(), name="outbox-recorder")
        self._ctx.handoff.attach(self._take, self._has_room, timedelta(seconds=self._settings.lease_seconds))

    def _has_room(self, destination: str) -> bool:
        """Whether a new message for `destination` may be handed over (else the claim finds it when due): its
        lane may hold as many again waiting, which start well within their lease."""
        return self._in_flight[destination] < 2 * self._settings.sends_per_destination

    def _take(self, work: OutboxWork) -> None:
        """A message handed over at a commit, on the loop's thread (SQLite) or a database thread."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            self._accept_handed(work)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed: its lease runs out and a claim sends it
                self._loop.call_soon_threadsafe(self._accept_handed, work)

    def _accept_handed(self, work: OutboxWork) -> None:
        assert self._loop is not None
        self._in_flight[work.message.destination] += 1
        self._handed.append((self._loop.time() + self._settings.lease_seconds / 2, work))
        self._wake.set()

    async def stop(self) -> None:
        self._ctx.handoff.detach()
        self._stopping = True
        self._wake.set()
        if self._main is not None:
            await self._main
        if self._tasks:  # sends in flight finish (each has its call's deadline) and are recorded
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._answered.set()
        if self._recorder is not None:
            await self._recorder
        unsent = self._unsent + [work.message.id for _, work in self._handed]
        self._handed.clear()
        if unsent:
            try:
                await self._run_in_db(release_unsent, self._ctx, unsent)
            except Exception:  # their leases run out instead: sent later, not lost
                _failed("releasing %d handed-over messages failed", len(unsent))

    def _full_lanes(self) -> frozenset[str]:
        return frozenset(d for d, n in self._in_flight.items() if n >= self._settings.sends_per_destination)

    async def _housekeeping(self, loop: asyncio.AbstractEventLoop, due: dict[str, float]) -> None:
        """Signed audit checkpoints, deadline sweeps and scheduled closes, each when its time has come."""
        if loop.time() >= due["checkpoint"]:
            try:
                await self._run_in_db(checkpoint_audit, self._ctx)
            except Exception:
                _failed("audit checkpoint failed; retrying")
            due["checkpoint"] = loop.time() + self._settings.checkpoint_interval_seconds
        if loop.time() >= due["sweep"]:
            try:
                await self._run_in_db(sweep_deadlines, self._ctx)
                # Windows due on schedule: the figures they queue are claimed just below.
                await self._run_in_db(close_due_windows, self._ctx)
                self.sweeps_done += 1
            except Exception:
                _failed("deadline sweep failed; retrying")
            due["sweep"] = loop.time() + self._settings.sweep_interval_seconds

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = {"sweep": 0.0, "claim": 0.0, "checkpoint": loop.time() + self._settings.checkpoint_interval_seconds}
        while not self._stopping:
            await self._housekeeping(loop, due)
            self._wake.clear()
            work = self._take_handed(loop.time())
            self.sent_handed += len(work)
            # The claim finds everything else: retries, messages of other kinds or other processes, leases run
            # out. Handed-over messages need none (see self.claims); it takes nothing for a province whose lane
            # is full.
            room = self._settings.max_in_flight - sum(self._in_flight.values())
            if room > 0 and (self._claim_wanted or loop.time() >= due["claim"]):
                claimed = await self._claim(min(room, self._settings.batch_size))
                due["claim"] = loop.time() + self._claim_gap
                work += claimed
            for item in work:
                task = loop.create_task(self._send(item))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if work:
                continue
            # Idle: wait for a wake-up (a hand-off, a commit's word, a send ended) or the next thing due; with
            # every send slot taken no claim can be made, so only a send ending does.
            next_due = min(due["sweep"], due["checkpoint"], due["claim"] if room > 0 else float("inf"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_due - loop.time()))

    async def _claim(self, limit: int) -> list[OutboxWork]:
        self._claim_wanted = False
        self._skipped = self._full_lanes()
        self.claims += 1
        try:
            claimed: list[OutboxWork] = await self._run_in_db(
                claim_outbox_work, self._ctx, limit, timedelta(seconds=self._settings.lease_seconds),
                sorted(self._skipped))
        except Exception:
            _failed("claiming outbox messages failed; retrying")
            claimed = []
        for item in claimed:
            self._in_flight[item.message.destination] += 1
        self.sent_claimed += len(claimed)
        if len(claimed) == limit:  # a full batch: more may be waiting
            self._claim_wanted = True
        if self._settings.poll_fast_after_work:
            self._claim_gap = IDLE_POLL_START_SECONDS if claimed else \
                min(self._settings.poll_interval_seconds, 2 * self._claim_gap)
        return claimed

    def _take_handed(self, now: float) -> list[OutboxWork]:
        work: list[OutboxWork] = []
        while self._handed and len(work) < self._settings.batch_size:
            send_by, item = self._handed.popleft()
            if now < send_by:
                work.append(item)
            else:  # too late to send it under its lease; the claim takes it once the lease ends
                self._in_flight[item.message.destination] -= 1
        return work

    def _lane(self, destination: str) -> asyncio.Semaphore:
        lane = self._lanes.get(destination)
        if lane is None:
            lane = self._lanes[destination] = asyncio.Semaphore(self._settings.sends_per_destination)
        return lane

    async def _send(self, work: OutboxWork) -> None:
        destination = work.message.destination
        try:
            async with self._lane(destination):
                if self._stopping:  # taken but not yet sent: given back at the stop, due at once for any gateway
                    self._unsent.append(work.message.id)
                    return
                result = await self._sender.send(work)
            self._answers.append((work, result))
            self._answered.set()
        except Exception:
            # Not answered: its lease runs out and it is sent again; nothing is lost.
            log.exception("sending an outbox message failed")
        finally:
            self._in_flight[destination] -= 1
            if destination in self._skipped:  # its lane has room again: claim what the last claim left for it
                self._skipped = self._skipped - {destination}
                self._claim_wanted = True
            self._wake.set()  # a send slot is free: a claim held back for want of one may be made

    async def _record(self) -> None:
        """Record the answers as they come, what is ready at once in one transaction."""
        while True:
            await self._answered.wait()
            self._answered.clear()
            while self._answers:
                batch = self._answers[:self._settings.batch_size]
                del self._answers[:len(batch)]
                try:
                    await self._run_in_db(record_outbox_results, self._ctx, batch, self._settings.backoff)
                except Exception:
                    # The leases expire and the messages are retried; nothing is lost.
                    _failed("recording %d outbox answers failed", len(batch))
            if self._stopping and all(task.done() for task in self._tasks):
                return
