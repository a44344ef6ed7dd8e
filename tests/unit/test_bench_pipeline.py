"""The bench's lifecycle ceiling (bench.pipeline) counts what it claims: every submission passes the
five hops and is counted once at each province, inside the window it arrived in."""

from __future__ import annotations

import asyncio
import struct
import time

import grpc
import grpc.aio

from bench.pipeline import COUNT, SUBMIT, add_handlers, gateway_handlers, province_handlers


async def _relay_round_trip(submissions: int) -> tuple[dict[str, tuple[int, int, int]], tuple[int, int, int]]:
    servers = [grpc.aio.server() for _ in range(3)]  # gateway, Xinjiang (giver), Gansu (receiver)
    addresses = [f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}" for server in servers]
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    gateway, xinjiang, gansu = channels
    add_handlers(servers[0], gateway_handlers(gansu, [xinjiang, gansu]))
    add_handlers(servers[1], province_handlers(gateway))
    add_handlers(servers[2], province_handlers(gateway))
    for server in servers:
        await server.start()
    try:
        started = time.time()
        submit = gateway.unary_unary(SUBMIT, request_serializer=None, response_deserializer=None)
        answers = await asyncio.gather(*(submit(i.to_bytes(16, "big") + bytes(250), timeout=10)
                                         for i in range(submissions)))
        assert [answer[:16] for answer in answers] == [i.to_bytes(16, "big") for i in range(submissions)]

        async def counts(channel: grpc.aio.Channel, since: float, until: float) -> tuple[int, int, int]:
            count = channel.unary_unary(COUNT, request_serializer=None, response_deserializer=None)
            inside, served, failed = struct.unpack("<qqq", await count(struct.pack("<dd", since, until), timeout=10))
            return inside, served, failed

        deadline = time.monotonic() + 10
        async def notified_everywhere() -> bool:
            notified = [(await counts(province, started, time.time()))[0] for province in (xinjiang, gansu)]
            return min(notified) >= submissions

        while not await notified_everywhere() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        now = time.time()
        seen = {"650000": await counts(xinjiang, started, now), "620000": await counts(gansu, started, now),
                "gateway": await counts(gateway, started, now)}
        before = await counts(gansu, started - 100, started - 1)  # a window before any of them: none
        return seen, before
    finally:
        for channel in channels:
            await channel.close(None)
        for server in servers:
            await server.stop(None)


def test_every_submission_reaches_both_provinces_once_and_is_counted_in_its_window() -> None:
    seen, before = asyncio.run(_relay_round_trip(200))
    # (notified, calls served, calls that failed): Xinjiang is told; Gansu is delivered to and told; the
    # gateway serves each submission and confirmation — five calls a lifecycle.
    assert seen == {"650000": (200, 200, 0), "620000": (200, 400, 0), "gateway": (0, 400, 0)}
    assert before == (0, 0, 0)
