"""The bench's floor (bench.floor) does the work it claims: every transfer passes the five hops with
its signatures checked, the gateway commits its records before answering, and a forged or resent
instruction is refused with nothing stored."""

from __future__ import annotations

import asyncio
import sqlite3
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from bench.floor import (
    GATEWAY,
    GIVER,
    RECEIVER,
    Records,
    gateway_handlers,
    instruction,
    opened,
    province_handlers,
    public_key,
    signed,
    signing_key,
)
from bench.pipeline import COUNT, DELIVER, SUBMIT, add_handlers

SIZE = 314


@asynccontextmanager
async def floor_relays(db: Path | None, checks: bool) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    servers = [grpc.aio.server() for _ in range(3)]  # gateway, Xinjiang (giver), Gansu (receiver)
    addresses = [f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}" for server in servers]
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    gateway, xinjiang, gansu = channels
    records = Records(str(db)) if db else None
    add_handlers(servers[0], gateway_handlers(gansu, {GIVER: xinjiang, RECEIVER: gansu}, records))
    add_handlers(servers[1], province_handlers(gateway, GIVER, checks))
    add_handlers(servers[2], province_handlers(gateway, RECEIVER, checks))
    for server in servers:
        await server.start()
    try:
        yield {GATEWAY: gateway, GIVER: xinjiang, RECEIVER: gansu}
    finally:
        for channel in channels:
            await channel.close(None)
        for server in servers:
            await server.stop(None)
        if records:
            records.close()


def _call(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


async def _notified(channel: grpc.aio.Channel, since: float) -> int:
    inside, _served, _failed = struct.unpack(
        "<qqq", await _call(channel, COUNT)(struct.pack("<dd", since, time.time()), timeout=10))
    return int(inside)


async def _wait_until_told(relays: dict[str, grpc.aio.Channel], since: float, expected: int) -> list[int]:
    deadline = time.monotonic() + 10
    while True:
        told = [await _notified(relays[code], since) for code in (GIVER, RECEIVER)]
        if min(told) >= expected or time.monotonic() > deadline:
            return told
        await asyncio.sleep(0.02)


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


def test_every_transfer_is_signed_checked_stored_and_told_to_both_provinces(tmp_path: Path) -> None:
    db = tmp_path / "floor.db"

    async def run() -> tuple[list[bytes], list[int]]:
        async with floor_relays(db, checks=True) as relays:
            started = time.time()
            submit = _call(relays[GATEWAY], SUBMIT)
            receipts = await asyncio.gather(*(submit(instruction(i.to_bytes(16, "big"), SIZE), timeout=10)
                                              for i in range(100)))
            told = await _wait_until_told(relays, started, 100)
            await asyncio.sleep(0.2)  # the last acknowledgements' batch
            return receipts, told

    receipts, told = asyncio.run(run())
    assert told == [100, 100]
    # Each receipt is the gateway's signature over the payload's digest and the state.
    for receipt in receipts:
        assert opened(public_key(GATEWAY), receipt)[32:40] == b"RECEIVED"
    assert _rows(db, "SELECT state, notified, count(*) FROM transfers GROUP BY 1, 2") == [("COMMITTED", 2, 100)]
    assert _rows(db, "SELECT sender, count(*) FROM requests GROUP BY 1 ORDER BY 1") == [(RECEIVER, 100), (GIVER, 100)]


def test_a_forged_or_resent_instruction_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    db = tmp_path / "floor.db"

    async def run() -> list[grpc.StatusCode]:
        async with floor_relays(db, checks=True) as relays:
            submit = _call(relays[GATEWAY], SUBMIT)
            accepted = instruction(b"A" * 16, SIZE)
            await submit(accepted, timeout=10)
            flipped = bytearray(instruction(b"B" * 16, SIZE))
            flipped[20] ^= 1
            # Signed by the receiver's key, not the giver's.
            impostor = signed(signing_key(RECEIVER), b"C" * 16 + bytes(SIZE - 80))
            codes = []
            for request in (bytes(flipped), impostor, accepted):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await submit(request, timeout=10)
                codes.append(refused.value.code())
            return codes

    assert asyncio.run(run()) == [grpc.StatusCode.UNKNOWN] * 3
    assert _rows(db, "SELECT transfer_id FROM transfers") == [(b"A" * 16,)]
    assert _rows(db, "SELECT count(*) FROM requests WHERE sender = '650000'") == [(1,)]


def test_a_checking_province_refuses_a_delivery_the_gateway_did_not_sign() -> None:
    async def run() -> grpc.StatusCode:
        async with floor_relays(None, checks=True) as relays:
            # The giver's instruction, wrapped in an envelope signed by the giver instead of the gateway.
            forged = signed(signing_key(GIVER), instruction(b"D" * 16, SIZE))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _call(relays[RECEIVER], DELIVER)(forged, timeout=10)
            return refused.value.code()

    assert asyncio.run(run()) == grpc.StatusCode.UNKNOWN
