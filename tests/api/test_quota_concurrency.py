"""Q5: many consumptions at once on one quota never draw more than it holds, on SQLite (one gateway, concurrent
calls) and on PostgreSQL with two gateways on one database; every answer is one step of a serial history whose
end is the quota's final figures, and the running totals agree with it."""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from gateway.app import create_gateway
from gateway.config import Settings
from protos.gongji.v1 import operations_pb2, quotas_pb2, quotas_pb2_grpc
from tests.api.quota_calls import consumption_message, figures, get_quota, grant, rows
from tests.support import GANSU, TEST_OUTBOX, Stack, error_seen

GRANTED = 100_000
CALLS = 48
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def second_gateway(stack: Stack, db_url: str) -> tuple[Any, grpc.Channel]:
    """Another gateway process's twin on the same database: its own servers, pools and outbox."""
    keys = stack.keys_dir
    settings = Settings(listen="127.0.0.1:0", ops_listen="127.0.0.1:0", database_url=db_url, metrics_listen="",
                        gateway_key_file=keys / "gateway.key", id_hash_key_file=keys / "id-hash.key",
                        data_key_file=keys / "data.keys", development=True, insecure_dev_plaintext=True,
                        province_call_timeout_seconds=2.0, db_threads=4, outbox=TEST_OUTBOX)
    gateway = stack.loop_thread.run(create_gateway(settings, stack.clock))
    return gateway, grpc.insecure_channel(f"127.0.0.1:{gateway.port}")


def draw_many(stack: Stack, channels: list[grpc.Channel]) -> tuple[list[quotas_pb2.ConsumeQuotaResponse],
                                                                  list[quotas_pb2.QuotaConsumption]]:
    """CALLS consumptions at once (some allowing partial draws), spread over `channels`; each is resent as it is
    (the same message id) until it gets an answer that is not a retryable failure. Returns (drawn, refused)."""
    chance = random.Random(18)
    messages = [consumption_message(stack, chance.randint(1_000, 6_000), allow_partial=i % 3 == 0)
                for i in range(CALLS)]
    envelopes = [stack.sign(m, GANSU) for m in messages]

    def send(index: int) -> quotas_pb2.ConsumeQuotaResponse | quotas_pb2.QuotaConsumption:
        stub = quotas_pb2_grpc.QuotasStub(channels[index % len(channels)])
        for _ in range(50):
            try:
                return stub.ConsumeQuota(quotas_pb2.ConsumeQuotaRequest(consumption=envelopes[index]), timeout=20)
            except grpc.RpcError as error:
                seen = error_seen(error)
                if seen.code in RETRYABLE or seen.reason == "REQUEST_IN_FLIGHT":
                    continue
                assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "QUOTA_EXCEEDED"), seen
                return messages[index]
        raise AssertionError("no answer after 50 attempts")

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, range(CALLS)))
    drawn = [a for a in answers if isinstance(a, quotas_pb2.ConsumeQuotaResponse)]
    refused = [a for a in answers if isinstance(a, quotas_pb2.QuotaConsumption)]
    return drawn, refused


def check_serial_history(stack: Stack, drawn: list[quotas_pb2.ConsumeQuotaResponse],
                         refused: list[quotas_pb2.QuotaConsumption]) -> None:
    final = get_quota(stack).quota
    assert final.granted_fen == GRANTED and final.released_fen == 0
    assert final.available_fen >= 0 and final.consumed_fen == sum(a.drawn_fen for a in drawn) <= GRANTED
    # Each answer is one step: sorted by what it left consumed, each drew exactly the difference from the last.
    consumed = 0
    for answer in sorted(drawn, key=lambda a: a.quota.consumed_fen):
        assert answer.drawn_fen > 0
        assert figures(answer.quota) == (GRANTED, consumed + answer.drawn_fen, 0, GRANTED - consumed - answer.drawn_fen)
        consumed += answer.drawn_fen
    assert consumed == final.consumed_fen
    # A refusal came when the quota could not cover the amount (and nothing was left, for a partial draw):
    # what is available only shrinks here, so it cannot cover it at the end either.
    for message in refused:
        assert message.amount_fen > final.available_fen
        assert not message.allow_partial or final.available_fen == 0
    assert len(refused) > 0, "the test draws more than the quota holds"
    assert rows(stack, "SELECT count(*) FROM consumptions") == [(len(drawn),)]
    assert rows(stack, "SELECT count(*) FROM quota_changes") == [(len(drawn) + 1,)]
    [pair] = stack.operations.GetStats(operations_pb2.GetStatsRequest(), timeout=5).quota_pairs
    assert figures(pair.totals) == figures(final) and pair.consumption_count == len(drawn)


def test_concurrent_consumptions_on_one_gateway_never_over_draw(stack: Stack) -> None:
    grant(stack, GRANTED)
    drawn, refused = draw_many(stack, [stack.channel] * 2)
    check_serial_history(stack, drawn, refused)


@pytest.mark.postgres
def test_two_gateways_on_one_postgresql_never_over_draw(stack: Stack, db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("two gateways share a PostgreSQL database")
    other, channel = second_gateway(stack, db_url)
    close: Callable[[], None] = lambda: stack.loop_thread.run(other.stop(1.0))  # noqa: E731
    try:
        grant(stack, GRANTED)
        drawn, refused = draw_many(stack, [stack.channel, channel])
        check_serial_history(stack, drawn, refused)
    finally:
        channel.close()
        close()
