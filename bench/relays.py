"""A relay phase: the flow's five RPCs through bench.pipeline's or bench.floor's relays, counted by arrival."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc.aio

from bench import floor
from bench.load import Phase, UnaryTarget
from bench.pipeline import COUNT, KEY_BYTES, SUBMIT

if TYPE_CHECKING:
    from bench.run import Relays

DEADLINE_S = 10.0
RELAY_SETTLE_S = 3.0  # after the window: notifications still on their way are counted by arrival time
# Drives one measured phase: its name, the target, the request factory and the answer's check.
Measured = Callable[[str, UnaryTarget[Any, Any], Callable[[], tuple[str, Any]], Callable[[Any], str]],
                    Awaitable[Phase]]


def relay_requests(request_bytes: int, signed: bool) -> Callable[[], tuple[str, bytes]]:
    """Requests of the echo's size, each with a key of its own: plain bytes for bench.pipeline, an
    instruction signed by the giver's province (in the driver, as the transfer phases sign theirs) for
    bench.floor."""
    counter = iter(range(1 << 62))

    def next_request() -> tuple[str, bytes]:
        key = next(counter).to_bytes(KEY_BYTES, "big")
        if signed:
            return key.hex(), floor.instruction(key, request_bytes)
        return key.hex(), key + bytes(max(0, request_bytes - KEY_BYTES))

    return next_request


async def relay_phase(name: str, relays: Relays, measured: Measured, request_bytes: int,
                      signed: bool) -> dict[str, Any]:
    """Driven like the transfers (the same `drive`); a lifecycle counts when both provinces were told
    within the window."""
    channel = grpc.aio.insecure_channel(relays.gateway)
    province_channels = {code: grpc.aio.insecure_channel(address) for code, address in relays.provinces.items()}
    identity: Any = bytes
    try:
        submit: UnaryTarget[bytes, bytes] = UnaryTarget(channel, SUBMIT, identity, identity, DEADLINE_S)
        phase = await measured(name, submit, relay_requests(request_bytes, signed), lambda answer: "OK")
        await asyncio.sleep(RELAY_SETTLE_S)
        window = struct.pack("<dd", phase.started_at, phase.started_at + phase.window_s)
        counts: dict[str, int] = {}
        failures = calls = 0
        for code, relay in [("gateway", channel), *province_channels.items()]:
            count = relay.unary_unary(COUNT, request_serializer=identity, response_deserializer=identity)
            inside, served, failed = struct.unpack("<qqq", await count(window, timeout=DEADLINE_S))
            failures += failed
            calls += served
            if code != "gateway":
                counts[code] = inside
    finally:
        await channel.close(None)
        for province_channel in province_channels.values():
            await province_channel.close(None)
    return {
        "submit_tps": round(phase.rate, 1),
        "submit_p50_ms": round(phase.latency_ms(50), 2),
        # Both provinces told within the window; the giver's and the receiver's counts, the smaller.
        "lifecycle_tps": round(min(counts.values()) / phase.window_s, 1),
        "notified_in_window": counts,
        "calls_per_second": round(calls / phase.window_s, 1),
        "errors": phase.errors + failures,
    }
