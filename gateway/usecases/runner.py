"""The use-case runner: how each kind of call runs a use case (contention retries, the outbox woken after changes)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from gateway.domain import reasons
from gateway.domain.errors import Contention, DatabaseBusy
from gateway.usecases.context import UseCaseContext
from gateway.usecases.ports import RunInDb

T = TypeVar("T")
CONTENTION_ATTEMPTS = 3
# The pauses between attempts while the database is locked: short at first (a lock held for a moment),
# then at most this long, so a freed database is noticed soon and a held one costs a few attempts a second.
FIRST_BUSY_PAUSE_SECONDS = 0.002
LONGEST_BUSY_PAUSE_SECONDS = 0.1


def waiting_out_locks(run_in_db: RunInDb, bound_seconds: float,
                      refused: Callable[[], None] | None = None) -> RunInDb:
    """`run_in_db`, waiting out a database another connection holds locked without holding up the event loop.

    An attempt that finds the database locked (DatabaseBusy: it waited as long as its thread may, on the event
    loop not at all) changed nothing; it is made again after a pause, until `bound_seconds` have passed since
    the first. Then the call is refused DATABASE_BUSY (and `refused` is told): nothing was done, and a resend
    with the same message_id later executes once.
    """
    async def run(use_case: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + bound_seconds
        pause = FIRST_BUSY_PAUSE_SECONDS
        while True:
            try:
                return await run_in_db(use_case, *args)
            except DatabaseBusy:
                left = give_up_at - loop.time()
                if left <= 0:
                    if refused is not None:
                        refused()
                    raise DatabaseBusy(f"the database has been locked by another connection for over "
                                       f"{bound_seconds:g} s: nothing was done, retry later with the same message_id",
                                       reason=reasons.DATABASE_BUSY) from None
                await asyncio.sleep(min(left, random.uniform(pause / 2, pause)))
                pause = min(2 * pause, LONGEST_BUSY_PAUSE_SECONDS)

    return run


class UseCaseRunner:
    """Runs use cases off the event loop, as queries, changes, streams or orchestrations. (What a change queues
    reaches the outbox loop at its commit: handed over, or the store's word that a claim will find it.)"""

    def __init__(self, ctx: UseCaseContext, run_in_db: RunInDb) -> None:
        self.ctx = ctx
        self._run_in_db = run_in_db

    async def _with_retries(self, use_case: Callable[..., T], *args: Any) -> T:
        return await self._retried(use_case, self.ctx, *args)

    async def _retried(self, step: Callable[..., T], *args: Any) -> T:
        """A transaction the database gave up on because of another (deadlock, serialization failure)
        changed nothing: run it again, a bounded number of times, after a short random pause."""
        for attempt in range(1, CONTENTION_ATTEMPTS + 1):
            try:
                result: T = await self._run_in_db(step, *args)
                return result
            except Contention:
                if attempt == CONTENTION_ATTEMPTS:
                    raise
                await asyncio.sleep(random.uniform(0.005, 0.02) * attempt)
        raise AssertionError("unreachable")

    async def query(self, use_case: Callable[..., T], *args: Any) -> T:
        """A synchronous use case that only reads."""
        return await self._with_retries(use_case, *args)

    async def change(self, use_case: Callable[..., T], *args: Any) -> T:
        """A synchronous use case that may change state (one transaction)."""
        return await self._with_retries(use_case, *args)

    def stream(self, use_case: Callable[..., AsyncIterator[T]], *args: Any) -> AsyncIterator[T]:
        """An asynchronous use case that yields results as they come (a server stream)."""
        return use_case(self.ctx, self._run_in_db, *args)

    async def orchestrate(self, use_case: Callable[..., Awaitable[T]], *args: Any) -> T:
        """An asynchronous use case that calls other systems between its database steps (each retried as a
        change is, on contention)."""
        return await use_case(self.ctx, self._retried, *args)
