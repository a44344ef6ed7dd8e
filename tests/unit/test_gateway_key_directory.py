"""The stub's GatewayKeyDirectory against a real grpc.aio server listing keys: validity and asking rules."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.security.keys import public_bytes
from gateway.security.signing import EnvelopeSigner
from gateway.wire import envelope_to_proto
from protos.gongji.v1 import common_pb2, keys_pb2, keys_pb2_grpc
from province_stub.gateway_keys import GatewayKeyDirectory
from tests.support import ListedGatewayKeys

START = 1_700_000_000.0
DELIVERY = "gongji.v1.TransferDelivery"


class Clocks:
    """The directory's wall clock (validity) and monotonic clock (when to ask again), moved by the test."""

    def __init__(self) -> None:
        self.wall = START
        self.mono = 1000.0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


def raw(key: Ed25519PublicKey | None) -> bytes | None:
    return None if key is None else key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def until(seconds_from_start: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int((START + seconds_from_start) * 1e9))
    return stamp


def listed(key_id: str, key: Ed25519PrivateKey, valid_until: Timestamp | None = None, alg: str = "ed25519") -> Any:
    answer = keys_pb2.GatewayKey(key_id=key_id, alg=alg, public_key=public_bytes(key), current=valid_until is None)
    if valid_until is not None:
        answer.valid_until.CopyFrom(valid_until)
    return answer


@asynccontextmanager
async def gateway_serving(servicer: keys_pb2_grpc.GatewayKeysServicer) -> AsyncIterator[str]:
    server = grpc.aio.server()
    keys_pb2_grpc.add_GatewayKeysServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@asynccontextmanager
async def directory_for(address: str, clocks: Clocks, **options: Any) -> AsyncIterator[GatewayKeyDirectory]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield GatewayKeyDirectory(channel, now=clocks.now, monotonic=clocks.monotonic, **options)


@asynccontextmanager
async def directory_served_by(servicer: keys_pb2_grpc.GatewayKeysServicer, clocks: Clocks,
                              **options: Any) -> AsyncIterator[GatewayKeyDirectory]:
    """A directory asking `servicer`, served on 127.0.0.1:0 for the block."""
    async with gateway_serving(servicer) as address, directory_for(address, clocks, **options) as directory:
        yield directory


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=20))


def test_a_listed_current_or_retiring_ed25519_key_is_answered_and_nothing_else() -> None:
    keys = {name: Ed25519PrivateKey.generate() for name in ("k3", "k2", "k1", "odd")}
    served = ListedGatewayKeys(
        listed("k3", keys["k3"]),
        listed("k2", keys["k2"], until(3600)),  # retiring: good for an hour more
        listed("k1", keys["k1"], until(-1)),  # past its end
        listed("rsa", keys["odd"], alg="rsa"),
        keys_pb2.GatewayKey(key_id="short", alg="ed25519", public_key=bytes(31), current=False),
    )

    async def test() -> None:
        clocks = Clocks()
        async with directory_served_by(served, clocks) as directory:
            assert raw(await directory.get("k3")) == public_bytes(keys["k3"])
            assert raw(await directory.get("k2")) == public_bytes(keys["k2"])
            for refused in ("k1", "rsa", "short", "never-listed"):
                assert await directory.get(refused) is None, refused
            # One question answered all of these: the refusals came within the refetch interval.
            assert served.calls == 1

    run(test)


def test_a_cached_key_is_refused_once_its_valid_until_passes() -> None:
    key = Ed25519PrivateKey.generate()
    served = ListedGatewayKeys(listed("k1", key, until(10)))

    async def test() -> None:
        clocks = Clocks()
        async with directory_served_by(served, clocks) as directory:
            assert await directory.get("k1") is not None
            clocks.wall += 10
            assert await directory.get("k1") is None
            clocks.mono += 5  # asked again, and still listed with that end: still refused
            assert await directory.get("k1") is None
            assert served.calls == 2

    run(test)


def test_unknown_key_ids_make_at_most_one_question_per_refetch_interval() -> None:
    key, later = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    served = ListedGatewayKeys(listed("k1", key))

    async def test() -> None:
        clocks = Clocks()
        async with directory_served_by(served, clocks, refetch_interval_s=1.0) as directory:
            assert await directory.get("k1") is not None
            assert served.calls == 1
            clocks.mono += 1.0
            # A flood of bogus key ids, one after the other and all at once: one question to the gateway.
            for n in range(50):
                assert await directory.get(f"bogus-{n}") is None
            assert await asyncio.gather(*(directory.get(f"many-{n}") for n in range(50))) == [None] * 50
            assert served.calls == 2
            assert await directory.get("k1") is not None  # the known key is answered from the cache
            clocks.mono += 0.5
            assert await directory.get("bogus") is None
            assert served.calls == 2
            clocks.mono += 0.5
            assert await directory.get("bogus") is None
            assert served.calls == 3
            # A key the gateway lists later is found by the next question allowed.
            served.keys.insert(0, listed("k2", later))
            assert await directory.get("k2") is None
            clocks.mono += 1.0
            assert raw(await directory.get("k2")) == public_bytes(later)
            assert served.calls == 4

    run(test)


def test_waiting_for_the_next_question_finds_a_key_listed_since_the_last() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    served = ListedGatewayKeys(listed("k1", old))

    async def test() -> None:
        # Real clocks: the wait is a real one, of at most the refetch interval.
        async with gateway_serving(served) as address, grpc.aio.insecure_channel(address) as channel:
            directory = GatewayKeyDirectory(channel, refetch_interval_s=0.3)
            assert await directory.get("k1") is not None
            served.keys = [listed("k2", new), listed("k1", old)]
            assert await directory.get("k2") is None  # within the interval: unknown at once
            started = time.monotonic()
            assert raw(await directory.get("k2", wait_for_refetch=True)) == public_bytes(new)
            assert time.monotonic() - started < 0.3 + 0.2
            assert served.calls == 2

    run(test)


def test_the_list_is_asked_again_when_old_so_a_retirement_is_seen() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    served = ListedGatewayKeys(listed("k1", old))

    async def test() -> None:
        clocks = Clocks()
        async with directory_served_by(served, clocks, max_age_s=60) as directory:
            assert await directory.get("k1") is not None
            # The gateway restarts with k2: k1 retires in 30 s.
            served.keys = [listed("k2", new), listed("k1", old, until(30))]
            clocks.mono += 59
            assert await directory.get("k1") is not None
            assert served.calls == 1  # a young list is not asked again for a key it has
            clocks.mono += 1
            assert await directory.get("k1") is not None  # asked again: retiring, still good
            assert await directory.get("k2") is not None
            assert served.calls == 2
            clocks.wall += 30
            assert await directory.get("k1") is None
            # Once the gateway no longer lists it, it is unknown whatever its end said.
            served.keys = [listed("k2", new)]
            clocks.mono += 60
            assert await directory.get("k2") is not None and served.calls == 3
            clocks.wall -= 30
            assert await directory.get("k1") is None

    run(test)


def test_an_unreachable_gateway_answers_unknown_within_the_deadline() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"

    async def test() -> None:
        async with directory_for(closed, Clocks(), deadline_s=0.5) as directory:
            started = time.monotonic()
            assert await directory.get("k1") is None
            assert time.monotonic() - started < 1.5

    run(test)


class SilentGateway(keys_pb2_grpc.GatewayKeysServicer):
    """Takes the call and never answers."""

    def __init__(self) -> None:
        self.calls = 0

    async def ListGatewayKeys(self, request: Any, context: Any) -> Any:
        self.calls += 1
        await asyncio.Event().wait()


def test_a_gateway_that_never_answers_is_unknown_at_the_deadline_and_asked_once() -> None:
    silent = SilentGateway()

    async def test() -> None:
        async with directory_served_by(silent, Clocks(), deadline_s=0.5) as directory:
            started = time.monotonic()
            assert await asyncio.gather(*(directory.get(f"k{n}") for n in range(10))) == [None] * 10
            elapsed = time.monotonic() - started
            assert 0.4 < elapsed < 1.5, elapsed
            assert silent.calls == 1

    run(test)


def test_the_keys_fetched_stay_usable_while_the_gateway_is_down() -> None:
    key = Ed25519PrivateKey.generate()
    served = ListedGatewayKeys(listed("k1", key))

    async def test() -> None:
        clocks = Clocks()
        server = grpc.aio.server()
        keys_pb2_grpc.add_GatewayKeysServicer_to_server(served, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with directory_for(f"127.0.0.1:{port}", clocks, deadline_s=0.5) as directory:
            assert await directory.get("k1") is not None
            await server.stop(0)
            clocks.mono += 3600  # old enough to ask again; the question fails
            started = time.monotonic()
            assert await directory.get("k1") is not None
            assert time.monotonic() - started < 1.5

    run(test)


def test_verify_answers_the_failures_the_stub_expects() -> None:
    key = Ed25519PrivateKey.generate()
    served = ListedGatewayKeys(listed("gateway-k1", key), listed("gateway-k0", key, until(-1)))

    def signed(key_id: str = "gateway-k1", signer: str = "gateway", payload_type: str = DELIVERY,
               with_key: Ed25519PrivateKey = key) -> common_pb2.SignedEnvelope:
        return envelope_to_proto(EnvelopeSigner(signer, key_id, with_key).sign(payload_type, b"payload"))

    async def test() -> None:
        async with directory_served_by(served, Clocks()) as directory:
            assert await directory.verify(signed(), payload_type=DELIVERY) == ""
            assert await directory.verify(signed("gateway-k9"), payload_type=DELIVERY) == "UNKNOWN_KEY"
            assert await directory.verify(signed("gateway-k0"), payload_type=DELIVERY) == "UNKNOWN_KEY"
            forged = signed(with_key=Ed25519PrivateKey.generate())
            assert await directory.verify(forged, payload_type=DELIVERY) == "BAD_SIGNATURE"
            assert await directory.verify(signed(signer="650000"), payload_type=DELIVERY) == "BAD_SIGNATURE"
            assert await directory.verify(signed(), payload_type="gongji.v1.Outcome") == "BAD_SIGNATURE"

    run(test)
