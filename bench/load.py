"""The load generators: the closed loop shared by the echo ceiling and the transfer driver, and an open loop
at a set rate (`drive_at_rate`, the consumptions' steady half).

The echo and the transfers both go through `drive`: the same grpc.aio channel type, the same multi-callable
call, the same number of coroutines, the same timing and error handling. Only the request factory differs.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from province_stub.answers import status_from_error

Req = TypeVar("Req")
Resp = TypeVar("Resp")

# Turns an answer into "OK" or a name for what is wrong with it (counted as an error).
Checker = Callable[[Any], str]


@dataclass(frozen=True)
class Call:
    """One finished call: `key` identifies it (the transfer id), `code` is "OK" or why not."""

    key: str
    started_at: float  # wall clock (time.time()), comparable with the stubs' received_at
    latency_s: float
    code: str


@dataclass
class Phase:
    """A measured phase: the calls started during its window and how long it really took."""

    name: str
    started_at: float  # wall clock
    window_s: float  # no call is started after started_at + window_s
    elapsed_s: float = 0.0  # until the last call started in the window had returned
    calls: list[Call] = field(default_factory=list)
    # Open loop (drive_at_rate) only: how much later than its schedule the latest call was sent.
    max_lag_s: float = 0.0

    @property
    def ok(self) -> list[Call]:
        return [c for c in self.calls if c.code == "OK"]

    @property
    def errors(self) -> int:
        return sum(1 for c in self.calls if c.code != "OK")

    @property
    def error_codes(self) -> dict[str, int]:
        return dict(Counter(c.code for c in self.calls if c.code != "OK"))

    @property
    def rate(self) -> float:
        """Successful calls per second of elapsed time."""
        return len(self.ok) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_ms(self, percent: float) -> float:
        return percentile([c.latency_s * 1000 for c in self.ok], percent)


def percentile(values: list[float], percent: float) -> float:
    """Nearest-rank percentile (a value that was actually observed); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


class UnaryTarget(Generic[Req, Resp]):
    """A unary method on a channel, called as any client of it would, with a deadline."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        method: str,
        serializer: Callable[[Req], bytes],
        deserializer: Callable[[bytes], Resp],
        deadline_s: float,
        *,
        with_reason: bool = False,
    ) -> None:
        self._call = channel.unary_unary(
            method, request_serializer=serializer, response_deserializer=deserializer
        )
        self._deadline_s = deadline_s
        self._with_reason = with_reason

    async def __call__(self, request: Req) -> tuple[str, Resp | None]:
        """("OK", answer) or (status code name, None), with the gateway's ErrorInfo reason ("UNAVAILABLE/
        DATABASE_BUSY") if `with_reason`; gRPC errors never escape."""
        try:
            answer: Resp = await self._call(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            reason = (status_from_error(error).reason or refused_stream(error)) if self._with_reason else ""
            return f"{error.code().name}/{reason}" if reason else error.code().name, None
        return "OK", answer


REFUSED_STREAM = "REFUSED_STREAM"


def refused_stream(error: grpc.aio.AioRpcError) -> str:
    """REFUSED_STREAM when HTTP/2 refused the call's stream (RST_STREAM code 7: more streams open on the connection
    than the server allows, the call not processed), else "". gRPC says so only in its details' text."""
    details = error.details() or ""
    return REFUSED_STREAM if "RST_STREAM" in details and "error code 7" in details else ""


async def drive(
    name: str,
    target: Callable[[Req], Awaitable[tuple[str, Resp | None]]],  # a UnaryTarget
    next_request: Callable[[], tuple[str, Req]],
    check: Callable[[Resp], str],
    *,
    concurrency: int,
    seconds: float | None = None,
    total_calls: int | None = None,
) -> Phase:
    """Keep `concurrency` calls in flight for `seconds` (or until `total_calls` were started).

    Closed loop: each coroutine starts its next call when the previous one returns, so the offered
    load is exactly `concurrency` in flight. The request is built before the clock starts: signing is
    the client's own work, not the server's latency.
    """
    loop = asyncio.get_running_loop()
    phase = Phase(name, started_at=time.time(), window_s=seconds or 0.0)
    end = loop.time() + seconds if seconds is not None else math.inf
    budget = [total_calls if total_calls is not None else math.inf]
    start = time.perf_counter()

    async def worker() -> None:
        while loop.time() < end and budget[0] > 0:
            budget[0] -= 1
            key, request = next_request()
            started_at = time.time()
            t0 = time.perf_counter()
            code, answer = await target(request)
            latency = time.perf_counter() - t0
            if answer is not None:
                code = check(answer)
            phase.calls.append(Call(key, started_at, latency, code))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.elapsed_s = time.perf_counter() - start
    if seconds is None:
        phase.window_s = phase.elapsed_s
    return phase


async def drive_at_rate(
    name: str,
    target: Callable[[Req], Awaitable[tuple[str, Resp | None]]],  # a UnaryTarget
    next_request: Callable[[], tuple[str, Req]],
    check: Callable[[Resp], str],
    *,
    rate: float,
    seconds: float,
    max_in_flight: int,
) -> Phase:
    """Send `rate` calls a second for `seconds`, each on its schedule whatever the earlier ones are doing.

    Open loop: a slow answer does not delay the next call, so queueing in the server shows in the latency. A
    call's latency runs from its scheduled time, not from when the driver got round to sending it: a driver
    falling behind counts against the server, never hides its queue (`max_lag_s` says how far behind it fell).
    The request is built before its time comes, as `drive` builds it before the clock starts.

    Beyond `max_in_flight` calls a call waits in the driver for one to end, its latency running all the while: a
    server stalled for a second would otherwise have more streams open on the connection than it allows (gRPC's
    client then has some of them refused, not queued).
    """
    phase = Phase(name, started_at=time.time(), window_s=seconds)
    start = time.perf_counter()
    slots = asyncio.Semaphore(max_in_flight)

    async def one(key: str, request: Req, scheduled: float) -> None:
        async with slots:
            code, answer = await target(request)
        latency = time.perf_counter() - scheduled
        if answer is not None:
            code = check(answer)
        phase.calls.append(Call(key, phase.started_at + (scheduled - start), latency, code))

    calls: list[asyncio.Task[None]] = []
    for index in range(math.floor(rate * seconds)):
        key, request = next_request()
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        phase.max_lag_s = max(phase.max_lag_s, time.perf_counter() - scheduled)
        calls.append(asyncio.create_task(one(key, request, scheduled)))
    await asyncio.gather(*calls)
    phase.elapsed_s = time.perf_counter() - start
    return phase
