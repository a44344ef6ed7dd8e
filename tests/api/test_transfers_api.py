"""Transfers over real channels: validation, authentication, idempotency, permissions, deadlines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.outbox_loop import OutboxSettings
from gateway.security.keys import public_bytes
from gateway.security.signing import EnvelopeSigner
from gateway.usecases.outbox_ports import Backoff
from gateway.wire import envelope_to_proto
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import common_pb2, operations_pb2, transfers_pb2
from province_stub.state import Behaviour, ConfirmMode
from tests.support import (
    GANSU,
    MOTHER,
    NEVER_CONFIRM,
    XINJIANG,
    LoopThread,
    Stack,
    error_of,
    error_seen,
    register,
    start_stack,
    ts,
    unique_id,
    wait_until,
)

S = transfers_pb2


def told(stack: Stack, province: str, transfer_id: str) -> list[Any]:
    return [n for n in stack.snapshot(province).notifications if n.transfer_id == transfer_id]


# -- every field of an instruction, refused with a stable reason, the field named, nothing stored ----

def _header(**changes: Any) -> Callable[[S.TransferInstruction], None]:
    def apply(message: S.TransferInstruction) -> None:
        for name, value in changes.items():
            setattr(message.header, name, value)
    return apply


def _set(path: str, value: Any) -> Callable[[S.TransferInstruction], None]:
    def apply(message: S.TransferInstruction) -> None:
        target: Any = message
        *parents, leaf = path.split(".")
        for part in parents:
            target = getattr(target, part)
        setattr(target, leaf, value)
    return apply


def _clear(name: str) -> Callable[[S.TransferInstruction], None]:
    return lambda message: message.ClearField(name)


BAD_FIELDS = [
    ("message_id empty", _header(message_id=""), "INVALID_MESSAGE_ID", "header.message_id"),
    ("message_id too long", _header(message_id="x" * 65), "INVALID_MESSAGE_ID", "header.message_id"),
    ("message_id bad chars", _header(message_id="a b/c"), "INVALID_MESSAGE_ID", "header.message_id"),
    ("receiver not a province", _header(receiver="620100"), "INVALID_PROVINCE_CODE", "header.receiver"),
    ("receiver is the sender", _header(receiver=XINJIANG), "NOT_CROSS_PROVINCE", "header.receiver"),
    ("no header", _clear("header"), "MISSING_FIELD", "header"),
    ("no created_at", lambda m: m.header.ClearField("created_at"), "MISSING_FIELD", "header.created_at"),
    ("created_at beyond year 9999", lambda m: setattr(m.header.created_at, "seconds", 10**12), "INVALID_TIMESTAMP",
     "header.created_at"),
    ("expires_at beyond year 9999", lambda m: setattr(m.expires_at, "seconds", 10**12), "INVALID_TIMESTAMP",
     "expires_at"),
    ("giver id check char", _set("giver.id_number", "650502199001011231"), "INVALID_ID_NUMBER", "giver.id_number"),
    ("giver id short", _set("giver.id_number", "65050219900101123"), "INVALID_ID_NUMBER", "giver.id_number"),
    ("giver id future birth", _set("giver.id_number", "650502209901011230"), "INVALID_ID_NUMBER",
     "giver.id_number"),
    ("giver pooling area elsewhere", _set("giver.pooling_area", "620100"), "INVALID_POOLING_AREA",
     "giver.pooling_area"),
    ("receiver id letters", _set("receiver.id_number", "62010219650512002A"), "INVALID_ID_NUMBER",
     "receiver.id_number"),
    ("receiver pooling area short", _set("receiver.pooling_area", "6201"), "INVALID_POOLING_AREA",
     "receiver.pooling_area"),
    ("same person", _set("receiver.id_number", "650502199001011230"), "SAME_PERSON", "receiver.id_number"),
    ("amount zero", _set("amount_fen", 0), "INVALID_AMOUNT", "amount_fen"),
    ("amount negative", _set("amount_fen", -1), "INVALID_AMOUNT", "amount_fen"),
    ("amount most negative", _set("amount_fen", -(2**63)), "INVALID_AMOUNT", "amount_fen"),
    ("currency USD", _set("currency", "USD"), "UNSUPPORTED_CURRENCY", "currency"),
    ("currency empty", _set("currency", ""), "UNSUPPORTED_CURRENCY", "currency"),
    ("expiry before creation", lambda m: m.expires_at.FromSeconds(m.header.created_at.seconds - 1),
     "INVALID_EXPIRY", "expires_at"),
    ("binding id bad chars", _set("binding_id", "b?d"), "INVALID_MESSAGE_ID", "binding_id"),
    ("binding id missing", _set("binding_id", ""), "MISSING_FIELD", "binding_id"),
]


@pytest.mark.parametrize(("case", "mutate", "reason", "field"), BAD_FIELDS, ids=[c[0] for c in BAD_FIELDS])
def test_every_bad_field_is_refused_and_nothing_is_stored(stack: Stack, case: str, mutate: Callable[..., None],
                                                           reason: str, field: str) -> None:
    before = stack.counts()
    instruction = stack.instruction()
    mutate(instruction)
    seen = error_of(lambda: stack.submit(instruction))
    assert (seen.code, seen.reason, seen.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, reason, field)
    assert "650502199001011230" not in seen.message and "620102196505120026" not in seen.message
    assert stack.counts() == before


# -- authentication: refused before any state change ------------------------------------------------

def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def test_tampered_or_misattributed_envelopes_are_refused_before_any_state_change(stack: Stack) -> None:
    before = stack.counts()
    instruction = stack.instruction()
    good = stack.sign(instruction)
    payload_type = "gongji.v1.TransferInstruction"
    gansu_signed_as_xinjiang = envelope_to_proto(EnvelopeSigner(XINJIANG, stack.signers[GANSU].key_id,
                                                                stack.signers[GANSU]._private_key)
                                                 .sign(payload_type, instruction.SerializeToString()))
    stale = stack.instruction(created_at=stack.clock.now() - timedelta(seconds=121))
    future = stack.instruction(created_at=stack.clock.now() + timedelta(seconds=121))
    query_signature = stack.sign(instruction, payload_type="gongji.v1.TransferQuery")
    cases: list[tuple[str, common_pb2.SignedEnvelope, grpc.StatusCode, str]] = [
        ("payload bit flip", common_pb2.SignedEnvelope(**{**_fields(good), "payload": _flip(good.payload, 20)}),
         grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE"),
        ("signature bit flip", common_pb2.SignedEnvelope(**{**_fields(good), "signature": _flip(good.signature, 5)}),
         grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE"),
        ("unknown key", common_pb2.SignedEnvelope(**{**_fields(good), "key_id": "650000-k9"}),
         grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_KEY"),
        ("another province's key", gansu_signed_as_xinjiang, grpc.StatusCode.UNAUTHENTICATED,
         "KEY_NOT_OWNED_BY_SIGNER"),
        ("signed by Gansu for a Xinjiang header", stack.sign(instruction, signer=GANSU),
         grpc.StatusCode.PERMISSION_DENIED, "SENDER_NOT_SIGNER"),
        ("signature made for another payload_type",
         common_pb2.SignedEnvelope(**{**_fields(query_signature), "payload_type": payload_type}),
         grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE"),
        ("envelope of another payload_type", query_signature, grpc.StatusCode.INVALID_ARGUMENT, "WRONG_PAYLOAD_TYPE"),
        ("algorithm not allowed", common_pb2.SignedEnvelope(**{**_fields(good), "alg": "rsa-sha256"}),
         grpc.StatusCode.UNAUTHENTICATED, "ALGORITHM_NOT_ALLOWED"),
        ("stale created_at", stack.sign(stale), grpc.StatusCode.INVALID_ARGUMENT, "STALE_MESSAGE"),
        ("future created_at", stack.sign(future), grpc.StatusCode.INVALID_ARGUMENT, "STALE_MESSAGE"),
        ("garbage payload", stack.sign(None, payload_type=payload_type, payload=b"\xff\xff\xff"),
         grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_PAYLOAD"),
        ("unknown field", stack.sign(None, payload_type=payload_type,
                                     payload=instruction.SerializeToString() + b"\xf8\x06\x01"),
         grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_FIELDS"),
        # api.md's order: the algorithm, the key and the signature come before the payload's type.
        ("another payload_type, unknown key", common_pb2.SignedEnvelope(**{**_fields(query_signature),
                                                                           "key_id": "650000-k9"}),
         grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_KEY"),
        ("empty envelope", common_pb2.SignedEnvelope(), grpc.StatusCode.UNAUTHENTICATED, "ALGORITHM_NOT_ALLOWED"),
    ]
    for case, envelope, code, reason in cases:
        seen = error_of(lambda e=envelope: stack.submit(e))
        assert (seen.code, seen.reason) == (code, reason), case
    assert stack.counts() == before
    # The server is still up and the untampered original goes through.
    assert stack.submit(good).state == S.TRANSFER_STATE_RECEIVED


def _fields(envelope: common_pb2.SignedEnvelope) -> dict[str, Any]:
    return {f.name: v for f, v in envelope.ListFields()}


def test_a_retired_key_is_refused(stack: Stack) -> None:
    new_key = Ed25519PrivateKey.generate()
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=XINJIANG, add_keys=[operations_pb2.ProvinceKey(key_id="650000-k2", alg="ed25519",
                                                            public_key=public_bytes(new_key))],
        retire_key_ids=["650000-k1"]), timeout=5)
    seen = error_of(lambda: stack.submit(stack.instruction()))
    assert (seen.code, seen.reason) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_NOT_ACTIVE")
    stack.signers[XINJIANG] = EnvelopeSigner(XINJIANG, "650000-k2", new_key)
    assert stack.submit(stack.instruction()).state == S.TRANSFER_STATE_RECEIVED


# -- idempotency (D15) -------------------------------------------------------------------------------

def test_identical_resend_gets_the_same_receipt_marked_replay(stack: Stack) -> None:
    envelope = stack.sign(stack.instruction())
    first = stack.submit(envelope)
    again = stack.submit(envelope)
    assert not first.replay and again.replay
    assert again.receipt == first.receipt and again.transfer_id == first.transfer_id
    assert stack.counts()["transfers"] == 1


def test_modified_resend_is_refused_and_changes_nothing(stack: Stack) -> None:
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)  # no confirmation request meanwhile
    instruction = stack.instruction(amount_fen=50_000)
    stack.submit(instruction)
    before = stack.counts()
    instruction.amount_fen += 1
    seen = error_of(lambda: stack.submit(instruction))
    assert (seen.code, seen.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MODIFIED_REQUEST")
    after = stack.counts()  # the first transfer's own delivery goes on meanwhile: compare what the resend could add
    assert (after["requests"], after["transfers"]) == (before["requests"], before["transfers"])
    assert stack.get(instruction.header.message_id).amount_fen == 50_000


def test_a_late_identical_resend_still_gets_the_stored_answer(stack: Stack) -> None:
    """D15 across the freshness window: a platform whose answer was lost may resend minutes later. A resend
    of the very bytes already answered executes nothing, so it gets that answer (acceptance, stored refusal,
    confirmation); anything the gateway has not answered before is still refused STALE_MESSAGE."""
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)
    accepted = stack.sign(stack.instruction())
    first = stack.submit(accepted)
    refused = stack.sign(stack.instruction(amount_fen=200_001))  # over the per-transfer limit: a stored refusal
    assert error_of(lambda: stack.submit(refused)).reason == "AMOUNT_OVER_LIMIT"
    transfer_id = first.transfer_id
    stack.wait_for_state(transfer_id, S.TRANSFER_STATE_DELIVERED)
    confirmation = stack.sign(transfers_pb2.TransferConfirmation(
        header=common_pb2.Header(message_id=unique_id("cf"), sender=GANSU, receiver="gateway",
                                 created_at=ts(stack.clock.now())),
        transfer_id=transfer_id, decision=transfers_pb2.CONFIRMATION_DECISION_CREDITED), GANSU)

    def confirm() -> transfers_pb2.ConfirmTransferResponse:
        return stack.transfers.ConfirmTransfer(transfers_pb2.ConfirmTransferRequest(confirmation=confirmation),
                                               timeout=10)

    confirmed = confirm()
    modified = stack.instruction(transfer_id=transfer_id)
    modified.header.created_at.CopyFrom(first_created_at := transfers_pb2.TransferInstruction.FromString(
        accepted.payload).header.created_at)
    modified.amount_fen += 1
    unseen = stack.instruction(created_at=first_created_at.ToDatetime(tzinfo=UTC))
    stack.clock.advance(600)  # five times the ±120 s window
    before = stack.counts()

    again = stack.submit(accepted)
    assert again.replay and again.receipt == first.receipt and again.state == first.state
    seen = error_of(lambda: stack.submit(refused))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AMOUNT_OVER_LIMIT")
    confirmed_again = confirm()
    assert confirmed_again.replay and confirmed_again.receipt == confirmed.receipt
    for never_answered in (modified, unseen):
        seen = error_of(lambda m=never_answered: stack.submit(m))
        assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "STALE_MESSAGE")
    assert stack.counts() == before


def test_fifty_concurrent_identical_submissions_make_one_transfer_and_one_delivery(stack: Stack) -> None:
    envelope = stack.sign(stack.instruction())
    barrier = threading.Barrier(50)
    outcomes: list[Any] = []
    lock = threading.Lock()

    def send() -> None:
        barrier.wait()
        try:
            result: Any = stack.submit(envelope)
        except grpc.RpcError as error:
            seen = error_seen(error)
            result = (seen.code, seen.reason)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=send) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    answers = [o for o in outcomes if isinstance(o, S.SubmitTransferResponse)]
    others = [o for o in outcomes if not isinstance(o, S.SubmitTransferResponse)]
    assert len(outcomes) == 50
    assert set(others) <= {(grpc.StatusCode.ABORTED, "REQUEST_IN_FLIGHT")}, others  # retry with the same id
    assert sum(not a.replay for a in answers) == 1
    assert len({a.receipt.SerializeToString() for a in answers}) == 1
    transfer_id = envelope_id(envelope)
    stack.wait_for_state(transfer_id, S.TRANSFER_STATE_COMMITTED)
    assert stack.counts()["transfers"] == 1
    assert stack.snapshot(GANSU).deliveries_received == 1


def envelope_id(envelope: common_pb2.SignedEnvelope) -> str:
    return S.TransferInstruction.FromString(envelope.payload).header.message_id


def test_a_transfer_id_taken_by_another_province_is_refused(stack: Stack) -> None:
    shared_id = unique_id("same")
    stack.submit(stack.instruction(transfer_id=shared_id))
    from_gansu = stack.instruction(transfer_id=shared_id, sender=GANSU, receiver=XINJIANG,
                                   giver=MOTHER, person=("650502199001011230", "650500"))
    seen = error_of(lambda: stack.submit(from_gansu, signer=GANSU))
    assert (seen.code, seen.reason) == (grpc.StatusCode.ALREADY_EXISTS, "TRANSFER_ID_TAKEN")


# -- permissions (D14) -------------------------------------------------------------------------------

def test_only_the_receivers_province_may_confirm(loop_thread: LoopThread, tmp_path: Path, db_url: str) -> None:
    stack = start_stack(loop_thread, tmp_path, db_url, behaviours={GANSU: NEVER_CONFIRM})
    try:
        transfer_id = stack.submit(stack.instruction()).transfer_id
        stack.wait_for_state(transfer_id, S.TRANSFER_STATE_DELIVERED)
        seen = error_of(lambda: stack.confirm(transfer_id, signer=XINJIANG))
        assert (seen.code, seen.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_RECEIVER_PROVINCE")
        assert stack.get(transfer_id).state == S.TRANSFER_STATE_DELIVERED
        answer = stack.confirm(transfer_id, signer=GANSU)
        assert answer.state == S.TRANSFER_STATE_COMMITTED
        stack.wait_for_state(transfer_id, S.TRANSFER_STATE_COMMITTED)
        seen = error_of(lambda: stack.confirm(transfer_id, signer=GANSU, decline=True))
        assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TRANSFER_ALREADY_FINAL")
    finally:
        stack.close()


def test_only_the_two_provinces_may_read_a_transfer(stack: Stack) -> None:
    beijing_key = Ed25519PrivateKey.generate()
    register(stack.operations, "110000", "北京", "127.0.0.1:1", "110000-k1", public_bytes(beijing_key))
    stack.signers["110000"] = EnvelopeSigner("110000", "110000-k1", beijing_key)
    transfer_id = stack.submit(stack.instruction()).transfer_id
    assert stack.get(transfer_id, signer=GANSU).transfer_id == transfer_id
    seen = error_of(lambda: stack.get(transfer_id, signer="110000"))
    assert (seen.code, seen.reason) == (grpc.StatusCode.NOT_FOUND, "TRANSFER_NOT_FOUND")  # as if there were none
    seen = error_of(lambda: stack.get("no-such-transfer"))
    assert (seen.code, seen.reason) == (grpc.StatusCode.NOT_FOUND, "TRANSFER_NOT_FOUND")


def test_a_query_meant_for_another_receiver_is_refused(stack: Stack) -> None:
    transfer_id = stack.submit(stack.instruction()).transfer_id
    query = S.TransferQuery(header=common_pb2.Header(message_id=unique_id("q"), sender=XINJIANG, receiver=GANSU,
                                                     created_at=ts(stack.clock.now())), transfer_id=transfer_id)
    seen = error_of(lambda: stack.transfers.GetTransfer(S.GetTransferRequest(query=stack.sign(query)), timeout=5))
    assert (seen.code, seen.reason, seen.metadata.get("field")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "WRONG_RECEIVER", "header.receiver")


def test_a_suspended_province_can_neither_submit_nor_receive(stack: Stack) -> None:
    def set_status(code: str, status: int) -> None:
        stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(code=code, status=status), timeout=5)

    set_status(GANSU, operations_pb2.PROVINCE_STATUS_SUSPENDED)
    instruction = stack.instruction()
    seen = error_of(lambda: stack.submit(instruction))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PROVINCE_SUSPENDED")
    again = error_of(lambda: stack.submit(instruction))  # a stored refusal: a retry never changes the outcome
    assert (again.code, again.reason, again.metadata.get("replay")) == (
        grpc.StatusCode.FAILED_PRECONDITION, "PROVINCE_SUSPENDED", "true")
    set_status(GANSU, operations_pb2.PROVINCE_STATUS_ACTIVE)  # takes effect on the next call
    assert stack.submit(stack.instruction()).state == S.TRANSFER_STATE_RECEIVED
    set_status(XINJIANG, operations_pb2.PROVINCE_STATUS_SUSPENDED)
    seen = error_of(lambda: stack.submit(stack.instruction()))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PROVINCE_SUSPENDED")


# -- faults and deadlines (the clock is moved, never waited for) ---------------------------------------

def test_destination_down_for_its_first_calls_is_delivered_after_retries(stack: Stack) -> None:
    stack.configure(GANSU, fail_next_calls=3)
    transfer_id = stack.submit(stack.instruction()).transfer_id
    stack.wait_for_state(transfer_id, S.TRANSFER_STATE_COMMITTED)
    snapshot = stack.snapshot(GANSU)
    assert snapshot.calls_failed == 3 and snapshot.deliveries_received == 1


def test_a_receiver_confirming_after_a_delay_commits_when_it_confirms(stack: Stack) -> None:
    # The stub holds the credit pending for its delay, then confirms on its own.
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_DELAY, confirm_delay_ms=1500)
    transfer_id = stack.submit(stack.instruction()).transfer_id
    stack.wait_for_state(transfer_id, S.TRANSFER_STATE_DELIVERED)
    delivered = time.monotonic()
    stack.wait_for_state(transfer_id, S.TRANSFER_STATE_COMMITTED)
    assert time.monotonic() - delivered > 1.0, "committed before the stub's delay was over"


def _submitted_and_rejected_at_the_delivery_deadline(stack: Stack) -> str:
    """A transfer whose deliveries keep failing: retried while RECEIVED, then REJECTED at the deadline."""
    transfer_id = stack.submit(stack.instruction()).transfer_id
    wait_until(lambda: stack.gateway_outbox_attempts(transfer_id) >= 2, what="delivery retries")
    assert stack.get(transfer_id).state == S.TRANSFER_STATE_RECEIVED
    stack.clock.advance(601)  # past the delivery deadline (policy default 600 s)
    view = stack.wait_for_state(transfer_id, S.TRANSFER_STATE_REJECTED)
    assert view.reason == "DESTINATION_UNREACHABLE"
    return transfer_id


def test_destination_answering_slower_than_every_call_deadline_is_rejected_at_the_deadline(
        loop_thread: LoopThread, tmp_path: Path, db_url: str) -> None:
    # Gansu accepts each call and answers after 1 s; the gateway gives each call 0.3 s, so it never hears back.
    stack = start_stack(loop_thread, tmp_path, db_url, province_call_timeout_seconds=0.3)
    try:
        stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER, latency_ms=1000)  # after the binding
        transfer_id = _submitted_and_rejected_at_the_delivery_deadline(stack)
        stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)  # answering in time again
        for province in (XINJIANG, GANSU):
            wait_until(lambda p=province: told(stack, p, transfer_id), what=f"{province} told")
            stack.wait_for_outbox_idle(province)
            assert [n.state for n in told(stack, province, transfer_id)] == [S.TRANSFER_STATE_REJECTED]
    finally:
        stack.close()


def test_destination_never_answering_is_rejected_at_the_deadline_and_the_giver_told_once(stack: Stack) -> None:
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(code=GANSU, endpoint="127.0.0.1:9"),
                                    timeout=5)
    transfer_id = _submitted_and_rejected_at_the_delivery_deadline(stack)
    wait_until(lambda: told(stack, XINJIANG, transfer_id), what="giver's province told")
    # Its acknowledgement recorded before the clock jumps: a notice still in flight across the jump outlives its
    # lease and is sent again with the same id (at least once, as the contract says), which is not a second one.
    stack.wait_for_outbox_idle(XINJIANG)
    stack.clock.advance(60)
    stack.wait_for_sweeps()  # later sweeps must not reject it again
    stack.wait_for_outbox_idle(XINJIANG)
    assert [(n.state, n.times_received) for n in told(stack, XINJIANG, transfer_id)] == [
        (S.TRANSFER_STATE_REJECTED, 1)]


def test_unconfirmed_transfer_is_returned_exactly_once_and_both_told(loop_thread: LoopThread, tmp_path: Path,
                                                                     db_url: str) -> None:
    stack = start_stack(loop_thread, tmp_path, db_url, behaviours={GANSU: NEVER_CONFIRM})
    try:
        transfer_id = stack.submit(stack.instruction()).transfer_id
        view = stack.wait_for_state(transfer_id, S.TRANSFER_STATE_DELIVERED)
        remaining = view.return_deadline.ToDatetime().timestamp() - stack.clock.now().timestamp()
        stack.clock.advance(remaining + 1)
        view = stack.wait_for_state(transfer_id, S.TRANSFER_STATE_RETURNED)
        for province in (XINJIANG, GANSU):
            wait_until(lambda p=province: told(stack, p, transfer_id), what=f"{province} told")
            stack.wait_for_outbox_idle(province)  # acknowledged before the jump, as above
        stack.clock.advance(3600)
        stack.wait_for_sweeps()  # later sweeps must not return it again
        for province in (XINJIANG, GANSU):
            stack.wait_for_outbox_idle(province)
        for province in (XINJIANG, GANSU):
            assert [(n.state, n.times_received) for n in told(stack, province, transfer_id)] == [
                (S.TRANSFER_STATE_RETURNED, 1)]
        assert [e.state for e in stack.get(transfer_id).history].count(S.TRANSFER_STATE_RETURNED) == 1
        seen = error_of(lambda: stack.confirm(transfer_id))
        assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TRANSFER_ALREADY_FINAL")
    finally:
        stack.close()


def test_a_confirmation_after_the_deadline_returns_the_transfer_however_late_the_sweep(
        loop_thread: LoopThread, tmp_path: Path, db_url: str) -> None:
    # The sweep runs once at start and then not for an hour: only the confirmation can see the deadline.
    outbox = OutboxSettings(poll_interval_seconds=0.05, sweep_interval_seconds=3600,
                            backoff=Backoff(base_seconds=0.05, max_seconds=0.5))
    stack = start_stack(loop_thread, tmp_path, db_url, behaviours={GANSU: NEVER_CONFIRM}, outbox=outbox)
    try:
        transfer_id = stack.submit(stack.instruction()).transfer_id
        view = stack.wait_for_state(transfer_id, S.TRANSFER_STATE_DELIVERED)
        remaining = view.return_deadline.ToDatetime().timestamp() - stack.clock.now().timestamp()
        stack.clock.advance(remaining + 1)
        confirmation = S.TransferConfirmation(
            header=common_pb2.Header(message_id=unique_id("cf"), sender=GANSU, receiver="gateway",
                                     created_at=ts(stack.clock.now())),
            transfer_id=transfer_id, decision=S.CONFIRMATION_DECISION_CREDITED)
        request = S.ConfirmTransferRequest(confirmation=stack.sign(confirmation, GANSU))
        seen = error_of(lambda: stack.transfers.ConfirmTransfer(request, timeout=10))
        assert (seen.code, seen.reason, seen.metadata.get("field")) == (
            grpc.StatusCode.FAILED_PRECONDITION, "CONFIRMATION_DEADLINE_PASSED", "transfer_id")
        again = error_of(lambda: stack.transfers.ConfirmTransfer(request, timeout=10))  # stored, replayed
        assert (again.code, again.reason, again.metadata.get("replay")) == (
            grpc.StatusCode.FAILED_PRECONDITION, "CONFIRMATION_DEADLINE_PASSED", "true")
        view = stack.get(transfer_id)
        assert (view.state, view.reason) == (S.TRANSFER_STATE_RETURNED, "CONFIRMATION_DEADLINE_PASSED")
        assert [e.state for e in view.history].count(S.TRANSFER_STATE_RETURNED) == 1
        assert view.settlement_window_id == ""
        for province in (XINJIANG, GANSU):
            wait_until(lambda p=province: told(stack, p, transfer_id), what=f"{province} told")
            assert [n.state for n in told(stack, province, transfer_id)] == [S.TRANSFER_STATE_RETURNED]
    finally:
        stack.close()


def test_destination_rejecting_ends_the_transfer_rejected(stack: Stack) -> None:
    stack.configure(GANSU, reject_reason="RECEIVER_NOT_INSURED")
    transfer_id = stack.submit(stack.instruction()).transfer_id
    view = stack.wait_for_state(transfer_id, S.TRANSFER_STATE_REJECTED)
    assert view.reason == "RECEIVER_NOT_INSURED"
    for province in (XINJIANG, GANSU):
        wait_until(lambda p=province: told(stack, p, transfer_id), what=f"{province} told")


def test_declined_transfer(loop_thread: LoopThread, tmp_path: Path, db_url: str) -> None:
    stack = start_stack(loop_thread, tmp_path, db_url,
                        behaviours={GANSU: Behaviour(confirm_mode=ConfirmMode.DECLINE)})
    try:
        transfer_id = stack.submit(stack.instruction()).transfer_id
        view = stack.wait_for_state(transfer_id, S.TRANSFER_STATE_DECLINED)
        assert view.reason == "RECEIVER_DECLINED"
    finally:
        stack.close()


def test_created_at_uses_the_gateway_clock(stack: Stack) -> None:
    # Messages are judged against the gateway's clock: one made "now" by the real clock is stale once
    # the gateway's clock has moved on.
    stack.clock.advance(3600)
    instruction = stack.instruction(created_at=stack.clock.now() - timedelta(seconds=3600))
    seen = error_of(lambda: stack.submit(instruction))
    assert seen.reason == "STALE_MESSAGE"
    instruction.header.created_at.CopyFrom(ts(stack.clock.now()))
    assert stack.submit(instruction).state == S.TRANSFER_STATE_RECEIVED
