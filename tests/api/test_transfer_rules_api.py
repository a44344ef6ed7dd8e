"""Transfers obey bindings (D10), suspensions (D3) and the giver province's policy (D12), over real channels."""

from __future__ import annotations

import threading
from datetime import datetime, time, timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from gateway.domain.clock import BEIJING
from gateway.outbox_loop import OutboxSettings
from gateway.usecases.outbox_ports import Backoff
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import common_pb2, operations_pb2, relations_pb2, transfers_pb2
from tests.support import (
    GANSU,
    GIVER,
    MOTHER,
    XINJIANG,
    LoopThread,
    Stack,
    error_of,
    error_seen,
    start_stack,
    wait_until,
)

CHILD = ("620102201508160027", "620100")  # the giver's daughter, born 2015


def binding_of(answer: relations_pb2.ProposeBindingResponse) -> str:
    return common_pb2.Receipt.FromString(answer.receipt.payload).subject_id


def national_policy(stack: Stack) -> None:
    """Xinjiang (the giver's province) back on the national defaults of domain.md."""
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=XINJIANG, policy=operations_pb2.ProvincePolicy()), timeout=5)


def move_clock_to(stack: Stack, beijing: time, days_ahead: int = 0) -> None:
    """Move the gateway's clock forward to the next `beijing` time of day (plus whole days)."""
    now = stack.clock.now().astimezone(BEIJING)
    target = datetime.combine(now.date(), beijing, tzinfo=BEIJING) + timedelta(days=days_ahead)
    while target <= now:
        target += timedelta(days=1)
    stack.clock.advance((target - now).total_seconds())


def submit_error(stack: Stack, **kwargs: object) -> tuple[grpc.StatusCode, str]:
    seen = error_of(lambda: stack.submit(stack.instruction(**kwargs)))  # type: ignore[arg-type]
    return seen.code, seen.reason


def accepted(stack: Stack, **kwargs: object) -> bool:
    return stack.submit(stack.instruction(**kwargs)).state == transfers_pb2.TRANSFER_STATE_RECEIVED  # type: ignore[arg-type]


def test_propose_accept_transfer_dissolve_then_no_more_transfers(stack: Stack) -> None:
    stack.configure(GANSU, consent_mode=control_pb2.CONSENT_MODE_NEVER)
    binding_id = binding_of(stack.propose(CHILD, relation_code="30"))
    assert submit_error(stack, person=CHILD, binding_id=binding_id) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                                      "BINDING_NOT_ACTIVE")
    stack.answer_consent(binding_id, method=relations_pb2.ATTESTATION_METHOD_GUARDIAN_DOCUMENT)
    transfer_id = stack.submit(stack.instruction(person=CHILD, binding_id=binding_id)).transfer_id
    stack.wait_for_state(transfer_id, transfers_pb2.TRANSFER_STATE_COMMITTED)
    stack.dissolve(binding_id)
    assert submit_error(stack, person=CHILD, binding_id=binding_id) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                                      "BINDING_NOT_ACTIVE")


def test_a_transfer_needs_the_binding_of_exactly_that_giver_and_receiver(stack: Stack) -> None:
    seen = error_of(lambda: stack.submit(stack.instruction(binding_id="")))
    assert (seen.code, seen.reason, seen.metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD",
                                                                "binding_id")
    before = stack.counts()
    assert submit_error(stack, binding_id="no-such-binding") == (grpc.StatusCode.NOT_FOUND, "BINDING_NOT_FOUND")
    after = stack.counts()  # an unknown reference stores nothing, like any NOT_FOUND
    assert (after["requests"], after["transfers"]) == (before["requests"], before["transfers"])
    # The mother's binding used for a transfer to the daughter.
    assert submit_error(stack, person=CHILD) == (grpc.StatusCode.FAILED_PRECONDITION, "BINDING_MISMATCH")


def test_a_suspended_member_can_neither_give_nor_receive(stack: Stack) -> None:
    stack.member_change(MOTHER, relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED)
    assert submit_error(stack) == (grpc.StatusCode.FAILED_PRECONDITION, "SETTLEMENT_SUSPENDED")
    stack.member_change(MOTHER, relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_RESUMED)
    assert accepted(stack)


def test_a_province_suspends_and_resumes_only_its_own_members(stack: Stack) -> None:
    """D20: Xinjiang's report on the mother binds her as a Xinjiang member, never her Gansu membership."""
    as_if_in_xinjiang = (MOTHER[0], "650500")
    stack.member_change(as_if_in_xinjiang, relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED, signer=XINJIANG)
    assert accepted(stack)  # she still receives in Gansu
    stack.member_change(MOTHER, relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED)  # Gansu's own report
    stack.member_change(as_if_in_xinjiang, relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_RESUMED, signer=XINJIANG)
    assert submit_error(stack) == (grpc.StatusCode.FAILED_PRECONDITION, "SETTLEMENT_SUSPENDED")  # not lifted
    stack.member_change(MOTHER, relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_RESUMED)
    assert accepted(stack)


@pytest.mark.parametrize("suspended", ["receiver", "giver"])
def test_a_party_suspended_after_the_submission_is_not_credited(stack: Stack, suspended: str) -> None:
    """D3: money moves at the credit, so a suspension reported in between stops it; a decline still ends it."""
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)
    transfer_id = stack.submit(stack.instruction()).transfer_id
    stack.wait_for_state(transfer_id, transfers_pb2.TRANSFER_STATE_DELIVERED)
    person, province = (MOTHER, GANSU) if suspended == "receiver" else (GIVER, XINJIANG)
    stack.member_change(person, relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED, signer=province)
    seen = error_of(lambda: stack.confirm(transfer_id))
    assert (seen.code, seen.reason, seen.metadata["field"]) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                                "SETTLEMENT_SUSPENDED", "transfer_id")
    assert stack.get(transfer_id).state == transfers_pb2.TRANSFER_STATE_DELIVERED
    assert stack.confirm(transfer_id, decline=True).state == transfers_pb2.TRANSFER_STATE_DECLINED


@pytest.mark.parametrize(("at", "allowed"), [
    (time(21, 59, 59), True), (time(22, 0, 0), False), (time(5, 59, 59), False), (time(6, 0, 0), True)],
    ids=["21:59:59", "22:00:00", "05:59:59", "06:00:00"])
def test_blackout_in_beijing_time(stack: Stack, at: time, allowed: bool) -> None:
    national_policy(stack)
    move_clock_to(stack, at)
    if allowed:
        assert accepted(stack)
    else:
        assert submit_error(stack) == (grpc.StatusCode.FAILED_PRECONDITION, "TRANSFER_BLACKOUT")


def test_the_fourth_transfer_of_a_beijing_day_is_refused_and_the_next_days_first_accepted(stack: Stack) -> None:
    national_policy(stack)
    move_clock_to(stack, time(10, 0))
    for _ in range(3):
        assert accepted(stack)
    assert submit_error(stack) == (grpc.StatusCode.FAILED_PRECONDITION, "DAILY_LIMIT_REACHED")
    move_clock_to(stack, time(6, 0))  # the next Beijing day, first minute after the blackout
    assert accepted(stack)


def test_the_largest_transfer_is_accepted_and_one_fen_more_refused(stack: Stack) -> None:
    national_policy(stack)
    move_clock_to(stack, time(12, 0))
    assert accepted(stack, amount_fen=200_000)
    assert submit_error(stack, amount_fen=200_001) == (grpc.StatusCode.FAILED_PRECONDITION, "AMOUNT_OVER_LIMIT")


def test_the_authorised_amount_is_reached_exactly_then_one_fen_more_refused(stack: Stack) -> None:
    stack.configure(GANSU, consent_mode=control_pb2.CONSENT_MODE_NEVER)
    binding_id = binding_of(stack.propose(CHILD, relation_code="30", authorised_amount_fen=100_000))
    stack.answer_consent(binding_id, method=relations_pb2.ATTESTATION_METHOD_GUARDIAN_DOCUMENT)
    assert accepted(stack, person=CHILD, binding_id=binding_id, amount_fen=60_000)
    assert accepted(stack, person=CHILD, binding_id=binding_id, amount_fen=40_000)
    assert submit_error(stack, person=CHILD, binding_id=binding_id, amount_fen=1) == (
        grpc.StatusCode.FAILED_PRECONDITION, "AUTHORISED_AMOUNT_EXCEEDED")
    assert stack.binding(binding_id).used_amount_fen == 100_000


def test_a_declined_transfer_no_longer_counts_against_the_authorised_amount(stack: Stack) -> None:
    stack.configure(GANSU, consent_mode=control_pb2.CONSENT_MODE_NEVER, confirm_mode=control_pb2.CONFIRM_MODE_DECLINE)
    binding_id = binding_of(stack.propose(CHILD, relation_code="30", authorised_amount_fen=100_000))
    stack.answer_consent(binding_id, method=relations_pb2.ATTESTATION_METHOD_GUARDIAN_DOCUMENT)
    declined = stack.submit(stack.instruction(person=CHILD, binding_id=binding_id, amount_fen=100_000)).transfer_id
    stack.wait_for_state(declined, transfers_pb2.TRANSFER_STATE_DECLINED)
    assert stack.binding(binding_id).used_amount_fen == 0
    # Gansu holds the next one pending: left declining, it could decline it before the amount is read.
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)
    assert accepted(stack, person=CHILD, binding_id=binding_id, amount_fen=100_000)
    assert stack.binding(binding_id).used_amount_fen == 100_000


def test_a_declined_transfer_gives_its_place_in_the_day_back(stack: Stack) -> None:
    # The national daily limit without the blackout: the stub's confirmations carry the real time, so
    # the gateway's clock stays where it is.
    policy = operations_pb2.ProvincePolicy(daily_transfer_limit=3, blackout_start_minute=0, blackout_end_minute=0)
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(code=XINJIANG, policy=policy), timeout=5)
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_DECLINE)
    declined = stack.submit(stack.instruction()).transfer_id
    stack.wait_for_state(declined, transfers_pb2.TRANSFER_STATE_DECLINED)
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_IMMEDIATE)
    for _ in range(3):
        assert accepted(stack)
    assert submit_error(stack) == (grpc.StatusCode.FAILED_PRECONDITION, "DAILY_LIMIT_REACHED")


def places_taken_in_days(stack: Stack) -> int:
    """The givers' transfers counted against their days (D12), all days together."""
    with stack.gateway.engine.connect() as conn:
        return int(conn.execute(text("SELECT coalesce(sum(count), 0) FROM giver_days")).scalar_one())


def fail_by(stack: Stack, how: str, transfer_id: str) -> None:
    """Drive the transfer to failing `how`: answered by the receiver, or at one of its deadlines (D13)."""
    if how == "undeliverable":
        wait_until(lambda: stack.gateway_outbox_attempts(transfer_id) >= 2, what="delivery retries")
        stack.clock.advance(601)  # past the delivery deadline (policy default 600 s)
    elif how == "returned":
        view = stack.wait_for_state(transfer_id, transfers_pb2.TRANSFER_STATE_DELIVERED)
        stack.clock.advance(view.return_deadline.ToDatetime().timestamp() - stack.clock.now().timestamp() + 1)
    elif how == "late_confirmation":
        view = stack.wait_for_state(transfer_id, transfers_pb2.TRANSFER_STATE_DELIVERED)
        stack.clock.advance(view.return_deadline.ToDatetime().timestamp() - stack.clock.now().timestamp() + 1)
        assert error_of(lambda: stack.confirm(transfer_id)).reason == "CONFIRMATION_DEADLINE_PASSED"


FAILURES = {  # how a transfer fails: what the receiver's stub does, the state it ends in
    "declined": ({"confirm_mode": control_pb2.CONFIRM_MODE_DECLINE}, transfers_pb2.TRANSFER_STATE_DECLINED),
    "rejected": ({"reject_reason": "RECEIVER_NOT_INSURED"}, transfers_pb2.TRANSFER_STATE_REJECTED),
    "undeliverable": ({"fail_next_calls": 100_000}, transfers_pb2.TRANSFER_STATE_REJECTED),
    "returned": ({"confirm_mode": control_pb2.CONFIRM_MODE_NEVER}, transfers_pb2.TRANSFER_STATE_RETURNED),
    "late_confirmation": ({"confirm_mode": control_pb2.CONFIRM_MODE_NEVER}, transfers_pb2.TRANSFER_STATE_RETURNED),
}


@pytest.mark.parametrize("how", FAILURES)
def test_a_transfer_gives_its_place_back_whichever_way_it_fails(loop_thread: LoopThread, tmp_path: Path,
                                                                 db_url: str, how: str) -> None:
    """D10, D12: declined at the confirmation, rejected by the receiver or at the delivery deadline by the
    outbox, returned at the confirmation deadline by the sweep or by a late confirmation: each time the amount
    goes back to the binding and the transfer leaves its giver's day."""
    # A late confirmation must find the deadline before the sweep does: the sweep then runs at start only.
    outbox = OutboxSettings(poll_interval_seconds=0.05, sweep_interval_seconds=3600 if how == "late_confirmation"
                            else 0.05, backoff=Backoff(base_seconds=0.05, max_seconds=0.5))
    stack = start_stack(loop_thread, tmp_path, db_url, outbox=outbox)
    try:
        _fail_and_count(stack, how)
    finally:
        stack.close()


def _fail_and_count(stack: Stack, how: str) -> None:
    stack.configure(GANSU, consent_mode=control_pb2.CONSENT_MODE_NEVER)
    binding_id = binding_of(stack.propose(CHILD, relation_code="30", authorised_amount_fen=100_000))
    stack.answer_consent(binding_id, method=relations_pb2.ATTESTATION_METHOD_GUARDIAN_DOCUMENT)
    days_before = places_taken_in_days(stack)
    behaviour, final = FAILURES[how]
    stack.configure(GANSU, **behaviour)
    transfer_id = stack.submit(stack.instruction(person=CHILD, binding_id=binding_id, amount_fen=100_000)).transfer_id
    fail_by(stack, how, transfer_id)
    stack.wait_for_state(transfer_id, final)
    assert stack.binding(binding_id).used_amount_fen == 0
    assert places_taken_in_days(stack) == days_before
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)
    assert accepted(stack, person=CHILD, binding_id=binding_id, amount_fen=100_000)
    assert stack.binding(binding_id).used_amount_fen == 100_000
    assert places_taken_in_days(stack) == days_before + 1


def test_concurrent_submissions_of_one_giver_never_pass_the_daily_limit(stack: Stack) -> None:
    """Twelve different transfers of one giver at once: exactly three get through (D12), on either database."""
    national_policy(stack)
    move_clock_to(stack, time(11, 0))
    barrier = threading.Barrier(12)
    answers: list[str] = []

    def one() -> None:
        message = stack.instruction()
        barrier.wait()
        try:
            stack.submit(message)
            answers.append("OK")
        except grpc.RpcError as error:
            answers.append(error_seen(error).reason)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(answers) == ["DAILY_LIMIT_REACHED"] * 9 + ["OK"] * 3
