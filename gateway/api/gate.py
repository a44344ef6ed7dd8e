"""The shutdown gate: while the gateway stops, new calls are refused, then held, never left to be CANCELLED."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from gateway.domain import errors, reasons


def shutting_down() -> errors.Unavailable:
    """The answer to a call the stopping gateway does not execute."""
    return errors.Unavailable("the gateway is stopping; nothing was done: retry later or on another gateway",
                              reason=reasons.SHUTTING_DOWN)


def _is_health(method: str) -> bool:
    return method.startswith("/grpc.health.")


@dataclass(eq=False)
class OpenStream:
    """A server stream let in (WatchTransfers, a health Watch): the stop ends it UNAVAILABLE / SHUTTING_DOWN."""

    task: asyncio.Task[Any] | None
    health: bool
    # Inside the use case (or the health service) waiting for what to send next, not inside gRPC sending it:
    # only there may the stop cancel its task (a cancelled send would end it CANCELLED).
    waiting: bool = False
    ended: bool = False  # the stop ends it: at its next item if it is sending now


class CallGate:
    """Lets calls in until the gateway starts stopping; then answers new ones UNAVAILABLE itself.

    A call *executes* once this gate has let it in (the use case's runner starts it): from then on it runs to its
    real answer (OK, or its refusal), as long as it takes up to the stop's grace. A call still queued when the gate
    closes (in gRPC core, or behind a busy event loop) executes nothing and is answered UNAVAILABLE /
    SHUTTING_DOWN, as is every call that arrives after.

    grpc.aio's own stop cancels the calls gRPC core holds but has not handed to Python (a busy event loop takes
    them one at a time), calls that reach the server in the instant it stops, before their client has read its
    GOAWAY, and every call or stream still open when its grace ends: such a client sees CANCELLED and cannot tell
    whether anything happened. So stopping goes in steps:

    1. `drain`: the gate closes; new calls are refused UNAVAILABLE / SHUTTING_DOWN (nothing was done: retry
       later or elsewhere), and the open streams other than health watches are ended so, while the unary calls
       inside finish, until the calls queued at the close have come through (no refusal for QUIET_SECONDS, or
       REFUSE_AT_MOST_SECONDS of a caller that keeps retrying);
    2. a process that exits then calls `hold_for_exit`: new calls are held, never answered, the health watches
       end UNAVAILABLE / SHUTTING_DOWN, and the process exits without gRPC's stop; the connections close with it
       and whatever was held or on its way fails UNAVAILABLE at its client;
    3. in a process that goes on (tests), `drain` holds new calls for HOLD_SECONDS instead of refusing them, so
       a retrying caller has no call on its way when the server stops; the server stops (its GOAWAY tells
       clients to go elsewhere) and `release` answers the held calls UNAVAILABLE / SHUTTING_DOWN and ends the
       health watches so. A call reaching the server in the instant it stops may still be CANCELLED there.
    """

    QUIET_SECONDS = 0.1
    REFUSE_AT_MOST_SECONDS = 1.0
    HOLD_SECONDS = 0.2

    def __init__(self) -> None:
        self.closed = False
        self.active = 0
        self._last_refusal = 0.0
        self._held: asyncio.Event | None = None
        self._streams: set[OpenStream] = set()

    def enter(self, method: str) -> None:
        """Count a call in; raises Unavailable once closed (see refuse for held calls)."""
        if self.closed and not _is_health(method):
            self._last_refusal = time.monotonic()
            raise shutting_down()
        self.active += 1

    async def refuse(self, method: str) -> None:
        """A closed gate's answer: at once while draining, after the server stopped once holding."""
        if self._held is not None and not _is_health(method):
            await self._held.wait()
        self.enter(method)

    def leave(self) -> None:
        self.active -= 1

    async def open_stream(self, method: str) -> OpenStream:
        """Let a server stream in (not counted among the calls the stop waits for: it is ended instead); a closed
        gate refuses it as it refuses a call, except a health watch, which it ends once the server has stopped."""
        if self.closed and not _is_health(method):
            await self.refuse(method)  # raises
        stream = OpenStream(asyncio.current_task(), _is_health(method), ended=self._released)
        self._streams.add(stream)
        return stream

    def close_stream(self, stream: OpenStream) -> None:
        self._streams.discard(stream)

    @property
    def _released(self) -> bool:
        return self._held is not None and self._held.is_set()

    def _end_streams(self, health: bool) -> None:
        for stream in self._streams:
            if stream.health == health and not stream.ended:
                stream.ended = True
                if stream.waiting and stream.task is not None:
                    stream.task.cancel()  # the stream's wrapper turns it into UNAVAILABLE / SHUTTING_DOWN

    async def drain(self, timeout: float, hold: bool = True) -> None:
        """Close; end the open streams; wait (≤ timeout) until no unary call is inside and the queued ones were
        answered; then, with `hold`, hold new calls for HOLD_SECONDS (the caller stops the server next, then calls
        release)."""
        self.closed = True
        self._end_streams(health=False)
        closed_at = self._last_refusal = time.monotonic()
        deadline = closed_at + timeout
        while (now := time.monotonic()) < deadline:
            if self.active == 0 and (now - self._last_refusal >= self.QUIET_SECONDS
                                     or now - closed_at >= self.REFUSE_AT_MOST_SECONDS):
                break
            await asyncio.sleep(0.01)
        if hold:
            self.hold()
            await asyncio.sleep(min(self.HOLD_SECONDS, max(0.0, deadline - time.monotonic())))

    def hold(self) -> None:
        """From now on, hold new calls (health checks aside) until `release`, or for ever: the process exits next."""
        self.closed = True
        if self._held is None:
            self._held = asyncio.Event()

    async def hold_for_exit(self, timeout: float = 0.5) -> None:
        """Hold new calls for ever (the process exits next, and the connections close with it); end the health
        watches UNAVAILABLE / SHUTTING_DOWN and wait (≤ timeout) until their answers are out."""
        self.hold()
        self._end_streams(health=True)
        deadline = time.monotonic() + timeout
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def release(self) -> None:
        """Answer the held calls and end the health watches (call once the server has begun to stop)."""
        if self._held is None:
            self._held = asyncio.Event()
        self._held.set()
        self._end_streams(health=True)
