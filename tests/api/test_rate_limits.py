"""Per-province rate limits on a real stack: a province over its budget is refused, the other is served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.domain.settlement import SettlementPolicy
from protos.gongji.v1 import transfers_pb2, transfers_pb2_grpc
from tests.support import GANSU, XINJIANG, ErrorSeen, LoopThread, Stack, error_of, start_stack

# One token every 1000 s: the seconds this test really takes refill nothing that matters, and moving the
# stack's clock is the only way a bucket fills up again (no sleeping).
RATE = 0.001
BURST = 40  # enough for start-up (the binding, its polls) and a transfer's way to COMMITTED


@pytest.fixture
def limited(loop_thread: LoopThread, tmp_path: Path, db_url: str) -> Iterator[Stack]:
    # No settlement close on schedule: the clock moves by hours here, and closing would make the stubs call.
    running = start_stack(loop_thread, tmp_path, db_url, rate_limit_per_second=RATE, rate_limit_burst=BURST,
                          settlement=SettlementPolicy(close_on_schedule=False))
    yield running
    running.close()


def _drain(stack: Stack, transfer_id: str, signer: str) -> ErrorSeen:
    """Read until the province's budget is spent; the refusal that ends it."""
    for _ in range(BURST + 10):
        try:
            stack.get(transfer_id, signer=signer)
        except grpc.RpcError:
            return error_of(lambda: stack.get(transfer_id, signer=signer))
    raise AssertionError(f"{signer} was never limited")


def test_a_burst_over_the_limit_is_refused_while_the_other_province_is_served(limited: Stack) -> None:
    stack = limited
    transfer_id = stack.submit(stack.instruction()).transfer_id
    stack.wait_for_state(transfer_id, transfers_pb2.TRANSFER_STATE_COMMITTED)

    seen = _drain(stack, transfer_id, XINJIANG)
    assert (seen.code, seen.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"), seen
    assert XINJIANG in seen.message and "same message_id" in seen.message

    # Every kind of call from Xinjiang is refused now, and a refused one changes nothing.
    refused = stack.instruction()
    before = stack.counts()
    for call in (lambda: stack.submit(refused), lambda: stack.verify_relation(),
                 lambda: stack.get(transfer_id)):
        seen = error_of(call)
        assert (seen.code, seen.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"), seen
    assert stack.counts() == before

    # Gansu has a budget of its own: served all along.
    assert stack.get(transfer_id, signer=GANSU).state == transfers_pb2.TRANSFER_STATE_COMMITTED

    # Time moves on: Xinjiang's bucket fills again. The refused transfer, retried under the same id (a new
    # created_at, so new bytes), is accepted as new: the refusal stored nothing, not even its id.
    stack.clock.advance(3 / RATE)
    retried = stack.instruction(transfer_id=refused.header.message_id)
    answer = stack.submit(retried)
    assert (answer.transfer_id, answer.replay) == (refused.header.message_id, False)
    assert answer.state == transfers_pb2.TRANSFER_STATE_RECEIVED
    stack.verify_receipt(answer.receipt, retried.SerializeToString())
    assert stack.counts()["transfers"] == before["transfers"] + 1


def test_forged_calls_in_a_provinces_name_do_not_spend_its_budget(limited: Stack) -> None:
    # The budget is spent only once a signature verifies: a flood of forgeries claiming Xinjiang is refused
    # as what it is (UNAUTHENTICATED) however long it goes on, and Xinjiang itself is still served.
    stack = limited
    transfer_id = stack.submit(stack.instruction()).transfer_id
    for _ in range(BURST * 2):
        forged = stack.sign(stack.instruction(), XINJIANG)
        forged.signature = bytes(64)
        seen = error_of(lambda envelope=forged: stack.submit(envelope))  # type: ignore[misc]
        assert (seen.code, seen.reason) == (grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE"), seen
    assert stack.get(transfer_id).transfer_id == transfer_id


def test_another_province_replaying_a_provinces_envelopes_does_not_spend_its_budget(
        loop_thread: LoopThread, tmp_path: Path, sqlite_url: str) -> None:
    # Gansu receives Xinjiang's signed instructions (DeliverTransfer passes them through) and could send
    # them back over its own certificate: each is refused as not Gansu's, and costs Xinjiang nothing.
    stack = start_stack(loop_thread, tmp_path, sqlite_url, tls_dir=tmp_path / "tls", rate_limit_per_second=RATE,
                        rate_limit_burst=BURST, settlement=SettlementPolicy(close_on_schedule=False))
    try:
        envelope = stack.sign(stack.instruction(), XINJIANG)
        as_gansu = transfers_pb2_grpc.TransfersStub(stack.channel_as(f"province-{GANSU}"))
        for _ in range(BURST * 2):
            seen = error_of(lambda: as_gansu.SubmitTransfer(
                transfers_pb2.SubmitTransferRequest(instruction=envelope), timeout=5))
            assert (seen.code, seen.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SIGNER_NOT_CALLER"), seen
        assert stack.submit(envelope).state == transfers_pb2.TRANSFER_STATE_RECEIVED  # Xinjiang is served
    finally:
        stack.close()
