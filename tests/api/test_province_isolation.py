"""A slow or unreachable province delays only its own messages; one back from an outage is reached again at once."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

from protos.gongji.v1 import transfers_pb2
from province_stub.server import start_stub
from tests.support import GANSU, GIVER, XINJIANG, LoopThread, Stack, start_stack, wait_until

T = transfers_pb2
SHAANXI = "610000"
FATHER = ("610103196207070037", "610100")  # in Xi'an; the giver's father (relation 51)


def delivery_seconds(stack: Stack, binding_id: str, count: int) -> list[float]:
    """Submit transfers to Shaanxi one at a time; how long each took to reach its province (DELIVERED or later)."""
    took = []
    for _ in range(count):
        started = time.monotonic()
        instruction = stack.instruction(receiver=SHAANXI, person=FATHER, binding_id=binding_id)
        transfer_id = stack.submit(instruction).transfer_id
        wait_until(lambda t=transfer_id: stack.get(t).state != T.TRANSFER_STATE_RECEIVED, interval=0.005,
                   what="the delivery to Shaanxi")
        took.append(time.monotonic() - started)
    return took


def test_a_province_answering_in_eight_seconds_delays_only_its_own_deliveries(loop_thread: LoopThread, tmp_path: Path,
                                                                            db_url: str) -> None:
    # The production call deadline (5 s): each of Gansu's calls holds its place that long before it times out.
    stack = start_stack(loop_thread, tmp_path, db_url, province_call_timeout_seconds=5.0)
    try:
        isolated(stack)
    finally:
        stack.close()


def isolated(stack: Stack) -> None:
    stack.add_province(SHAANXI, "陕西")
    binding_id = stack.bind(GIVER, FATHER, "51", XINJIANG, SHAANXI)
    normal = statistics.median(delivery_seconds(stack, binding_id, 10))
    stack.configure(GANSU, latency_ms=8_000)  # beyond the gateway's call deadline: every call times out
    # More of Gansu's messages than the outbox sends at once: they fill Gansu's lane, and keep it full as they
    # time out and are retried.
    backlog = [stack.submit(stack.instruction()).transfer_id for _ in range(300)]
    wait_until(lambda: sum(stack.gateway.outbox_sent) >= 100, timeout=30, what="Gansu's deliveries attempted")
    took = delivery_seconds(stack, binding_id, 10)
    meanwhile = statistics.median(took)
    print(f"isolation: Shaanxi delivery median {normal:.3f} s alone, {meanwhile:.3f} s (max {max(took):.3f} s) "
          "with Gansu timing out")
    # Medians of ten, with a quarter-second floor for a busy machine: a shared queue made them seconds; and none
    # waits as long as one of Gansu's calls (5 s), as behind a batch holding one of them.
    assert meanwhile <= max(2 * normal, normal + 0.25), (normal, meanwhile)
    assert max(took) < 2.5, took
    assert all(stack.get(t).state == T.TRANSFER_STATE_RECEIVED for t in backlog[-5:])  # Gansu's still waiting


def test_a_province_back_from_an_outage_is_reached_within_seconds(loop_thread: LoopThread, tmp_path: Path,
                                                                  sqlite_url: str) -> None:
    """gRPC's own reconnection backoff grows to minutes; after 20 s away a province waits seconds at most."""
    stack = start_stack(loop_thread, tmp_path, sqlite_url)
    try:
        gansu = stack.stubs[GANSU]
        config = dataclasses.replace(gansu.config, listen=gansu.address)  # back on the same port
        loop_thread.run(gansu.stop(0.1))
        transfer_id = stack.submit(stack.instruction()).transfer_id
        away = time.monotonic()
        wait_until(lambda: time.monotonic() - away > 20, timeout=30, interval=0.5, what="twenty seconds away")
        assert stack.get(transfer_id).state == T.TRANSFER_STATE_RECEIVED
        stack.stubs[GANSU] = loop_thread.run(start_stub(config))
        back = time.monotonic()
        wait_until(lambda: stack.get(transfer_id).state != T.TRANSFER_STATE_RECEIVED, timeout=30, interval=0.05,
                   what="the delivery once Gansu is back")
        assert time.monotonic() - back < 4.0
    finally:
        stack.close()
