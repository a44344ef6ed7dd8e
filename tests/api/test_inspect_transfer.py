"""InspectTransfer and `gongji transfers show`: a transfer's delivery attempts and the deadline that truly ends it."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from gateway.domain.clock import BEIJING
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import operations_pb2, transfers_pb2
from tests.api.cli_support import gongji, gongji_json, wide_terminal  # noqa: F401
from tests.support import GANSU, XINJIANG, Stack, wait_until

W = operations_pb2
T = transfers_pb2


def inspect(stack: Stack, transfer_id: str) -> operations_pb2.InspectTransferResponse:
    return stack.operations.InspectTransfer(W.InspectTransferRequest(transfer_id=transfer_id), timeout=5)


def beijing(at: datetime) -> str:
    return at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def test_an_undelivered_transfer_shows_its_attempts_and_is_rejected_600_s_after_arrival(stack: Stack) -> None:
    stack.configure(GANSU, fail_next_calls=1_000_000)
    transfer_id = stack.submit(stack.instruction()).transfer_id
    seen = wait_until(lambda: (a := inspect(stack, transfer_id)).messages and a.messages[0].attempts >= 2
                      and a.messages[0].last_error and a, what="failed delivery attempts")
    [delivery] = seen.messages
    assert (delivery.destination, delivery.kind, delivery.status, delivery.message_id) == (
        GANSU, W.OUTBOX_MESSAGE_KIND_DELIVER_TRANSFER, W.OUTBOX_MESSAGE_STATUS_PENDING, f"dlv:{transfer_id}")
    assert delivery.HasField("next_attempt_at") and not delivery.HasField("done_at")
    # Not the return deadline (06:00 Beijing the next day): undelivered, it is REJECTED 600 s after arrival.
    arrived = seen.transfer.created_at.ToDatetime(tzinfo=UTC)
    rejected_at = arrived + timedelta(seconds=600)
    assert (seen.deadline.state, seen.deadline.reason) == (T.TRANSFER_STATE_REJECTED, "DESTINATION_UNREACHABLE")
    assert seen.deadline.at.ToDatetime(tzinfo=UTC) == rejected_at
    assert rejected_at < seen.transfer.return_deadline.ToDatetime(tzinfo=UTC)

    code, out = gongji(stack, "transfers", "show", transfer_id)
    assert code == 0, out
    assert f"REJECTED at {beijing(rejected_at)} (Beijing) unless delivered before, reason DESTINATION_UNREACHABLE" \
        in out
    assert "returned if unconfirmed" not in out and beijing(seen.transfer.return_deadline.ToDatetime(tzinfo=UTC)) \
        not in out
    assert "DELIVER_TRANSFER" in out and "PENDING" in out and delivery.last_error in out
    shown = gongji_json(stack, "transfers", "show", transfer_id)
    assert (shown["transfer_id"], shown["deadline"]["state"], shown["deadline"]["reason"]) == (
        transfer_id, "TRANSFER_STATE_REJECTED", "DESTINATION_UNREACHABLE")
    assert shown["messages"][0]["status"] == "OUTBOX_MESSAGE_STATUS_PENDING" and shown["messages"][0]["attempts"] >= 2

    # As said: past that time the gateway gives up, and both provinces are to be told.
    stack.clock.advance(601)
    stack.wait_for_state(transfer_id, T.TRANSFER_STATE_REJECTED)
    after = wait_until(lambda: len((a := inspect(stack, transfer_id)).messages) == 3 and a,
                       what="the outcome notices queued")
    assert not after.HasField("deadline")
    delivery = after.messages[0]
    assert (delivery.status, delivery.last_error) == (W.OUTBOX_MESSAGE_STATUS_EXPIRED, "DESTINATION_UNREACHABLE")
    assert delivery.HasField("done_at") and not delivery.HasField("next_attempt_at")
    assert {(m.destination, m.kind, m.outcome) for m in after.messages[1:]} == {
        (code, W.OUTBOX_MESSAGE_KIND_NOTIFY_TRANSFER_OUTCOME, "REJECTED") for code in (XINJIANG, GANSU)}
    code, out = gongji(stack, "transfers", "show", transfer_id)
    assert code == 0 and "final" in out and "EXPIRED" in out and "NOTIFY_TRANSFER_OUTCOME REJECTED" in out


def test_a_delivered_unconfirmed_transfer_is_returned_at_six_the_next_morning(stack: Stack) -> None:
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)
    transfer_id = stack.submit(stack.instruction()).transfer_id
    stack.wait_for_state(transfer_id, T.TRANSFER_STATE_DELIVERED)
    seen = inspect(stack, transfer_id)
    arrived = seen.transfer.created_at.ToDatetime(tzinfo=UTC).astimezone(BEIJING)
    returned_at = datetime.combine(arrived.date() + timedelta(days=1), time(6), tzinfo=BEIJING)
    assert (seen.deadline.state, seen.deadline.reason) == (T.TRANSFER_STATE_RETURNED, "CONFIRMATION_DEADLINE_PASSED")
    assert seen.deadline.at.ToDatetime(tzinfo=UTC) == returned_at == seen.transfer.return_deadline.ToDatetime(
        tzinfo=UTC)
    [delivery] = seen.messages
    assert (delivery.kind, delivery.status, delivery.attempts, delivery.last_error) == (
        W.OUTBOX_MESSAGE_KIND_DELIVER_TRANSFER, W.OUTBOX_MESSAGE_STATUS_DONE, 1, "")
    assert delivery.HasField("done_at") and not delivery.HasField("next_attempt_at")
    code, out = gongji(stack, "transfers", "show", transfer_id)
    assert code == 0 and (f"RETURNED at {beijing(returned_at)} (Beijing) unless confirmed before, reason "
                          "CONFIRMATION_DEADLINE_PASSED") in out
    assert "DONE" in out
