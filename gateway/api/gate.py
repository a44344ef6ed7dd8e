"""The shutdown gate: while the gateway stops, new calls are refused, then held, never left to be CANCELLED."""

from __future__ import annotations

import asyncio
import time

from gateway.domain import errors, reasons


class CallGate:
    """Lets calls in until the gateway starts stopping; then answers new ones UNAVAILABLE itself.

    grpc.aio's own stop cancels the calls gRPC core holds but has not handed to Python (a busy event
    loop takes them one at a time), and calls that reach the server in the instant it stops, before
    their client has seen its GOAWAY: such a client sees CANCELLED and cannot tell whether anything
    happened. So stopping goes in steps:

    1. `drain`: the gate closes; new calls are refused UNAVAILABLE / SHUTTING_DOWN (nothing was done:
       retry later or elsewhere) while the unary calls inside finish, until the calls queued at the
       close have come through (no refusal for QUIET_SECONDS, or REFUSE_AT_MOST_SECONDS of a caller
       that keeps retrying);
    2. then, for HOLD_SECONDS, new calls are held instead of refused, so a retrying caller has no call
       on its way when the server stops;
    3. the server stops (its GOAWAY tells clients to go elsewhere) and `release` answers the held
       calls UNAVAILABLE / SHUTTING_DOWN.
    """

    QUIET_SECONDS = 0.1
    REFUSE_AT_MOST_SECONDS = 1.0
    HOLD_SECONDS = 0.2

    def __init__(self) -> None:
        self.closed = False
        self.active = 0
        self._last_refusal = 0.0
        self._held: asyncio.Event | None = None

    def enter(self, method: str) -> None:
        """Count a call in; raises Unavailable once closed (see refuse for held calls)."""
        if self.closed and not method.startswith("/grpc.health."):
            self._last_refusal = time.monotonic()
            raise errors.Unavailable("the gateway is stopping; nothing was done: retry later or on another "
                                     "gateway", reason=reasons.SHUTTING_DOWN)
        self.active += 1

    async def refuse(self, method: str) -> None:
        """A closed gate's answer: at once while draining, after the server stopped once holding."""
        if self._held is not None and not method.startswith("/grpc.health."):
            await self._held.wait()
        self.enter(method)

    def leave(self) -> None:
        self.active -= 1

    async def drain(self, timeout: float) -> None:
        """Close; wait (≤ timeout) until no unary call is inside and the queued ones were answered; then
        hold new calls for HOLD_SECONDS (the caller stops the server next, then calls release)."""
        self.closed = True
        closed_at = self._last_refusal = time.monotonic()
        deadline = closed_at + timeout
        while (now := time.monotonic()) < deadline:
            if self.active == 0 and (now - self._last_refusal >= self.QUIET_SECONDS
                                     or now - closed_at >= self.REFUSE_AT_MOST_SECONDS):
                break
            await asyncio.sleep(0.01)
        self._held = asyncio.Event()
        await asyncio.sleep(min(self.HOLD_SECONDS, max(0.0, deadline - time.monotonic())))

    def release(self) -> None:
        """Answer the held calls (call once the server has begun to stop)."""
        if self._held is not None:
            self._held.set()
