"""The database watch: whether the database can be written, told to the health checks and, once an episode, the log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# A probe every second: a lock is seen within about a second and a half (the probe's wait included), and
# its end within a second.
PROBE_INTERVAL_SECONDS = 1.0
# How long the probe waits for the locks before it calls the database busy: far longer than any of the
# gateway's own transactions holds them.
PROBE_WAIT_SECONDS = 0.5
# At most one warning this often: episodes that begin sooner are counted into the next one.
WARN_AT_MOST_EVERY_SECONDS = 60.0


@dataclass
class _Episode:
    since: float  # when the last probe that found the database writable began (loop time)
    warned: bool
    refused_before: int  # calls refused DATABASE_BUSY before it began


class DatabaseWatch:
    """Once started, probes the database on a thread every `interval_seconds` and tells `on_change` when it can
    no longer be written, and when it can again (the health checks say NOT_SERVING, then SERVING). A busy episode
    is logged once: a WARNING when it begins (rate-limited) and an INFO line with its length when it is over."""

    def __init__(self, probe: Callable[[], bool], refusing_after_seconds: float,
                 interval_seconds: float = PROBE_INTERVAL_SECONDS,
                 warn_every_seconds: float = WARN_AT_MOST_EVERY_SECONDS) -> None:
        self._probe = probe
        self._interval = interval_seconds
        self._warn_every = warn_every_seconds
        self._on_change: Callable[[bool], Awaitable[None]] | None = None
        self._refusing_after = refusing_after_seconds
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._episode: _Episode | None = None
        self._last_warning: float | None = None
        self._unwarned = 0  # episodes since the last warning that had none of their own
        self._unwarned_seconds = 0.0
        self.refused = 0  # calls refused DATABASE_BUSY, ever

    @property
    def writable(self) -> bool:
        return self._episode is None

    def count_refusal(self) -> None:
        self.refused += 1

    def start(self, on_change: Callable[[bool], Awaitable[None]]) -> None:
        self._on_change = on_change
        self._task = asyncio.get_running_loop().create_task(self._run(), name="database-watch")

    async def stop(self) -> None:
        """Stop probing (a probe under way finishes first: it waits PROBE_WAIT_SECONDS at most)."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_writable = loop.time()
        while not self._stop.is_set():
            began = loop.time()
            try:
                writable, cause = await asyncio.to_thread(self._probe), "locked by another connection"
            except Exception as error:  # unreachable, or failing: not writable either; its type names it
                writable, cause = False, f"failing ({type(error).__name__})"
            if writable:
                last_writable = began
                await self._writable(loop.time())
            elif self._episode is None:
                await self._busy(last_writable, loop.time(), cause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, began + self._interval - loop.time()))

    async def _busy(self, since: float, now: float, cause: str) -> None:
        warn = self._last_warning is None or now - self._last_warning >= self._warn_every
        self._episode = _Episode(since, warn, self.refused)
        if warn:
            self._last_warning = now
            earlier = (f" ({self._unwarned} shorter episode(s) since the last warning, {self._unwarned_seconds:.1f} s "
                       f"in all)" if self._unwarned else "")
            log.warning("database busy: %s for %.1f s so far, it cannot be written; health says NOT_SERVING, and "
                        "calls wait at most %g s for it, then are refused UNAVAILABLE / DATABASE_BUSY (nothing done; "
                        "a resend executes once)%s",
                        cause, now - since, self._refusing_after, earlier)
            self._unwarned, self._unwarned_seconds = 0, 0.0
        assert self._on_change is not None
        await self._on_change(False)

    async def _writable(self, now: float) -> None:
        episode, self._episode = self._episode, None
        if episode is None:
            return
        assert self._on_change is not None
        await self._on_change(True)
        if episode.warned:
            log.info("database writable again after %.1f s busy; %d call(s) refused DATABASE_BUSY meanwhile; "
                     "health says SERVING", now - episode.since, self.refused - episode.refused_before)
        else:
            self._unwarned += 1
            self._unwarned_seconds += now - episode.since
