"""Transfer use cases: submit (giver's province), confirm (receiver's province), read (either)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.domain import reasons
from gateway.domain.bindings import Binding, BindingState
from gateway.domain.clock import BEIJING
from gateway.domain.envelope import Envelope
from gateway.domain.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied
from gateway.domain.identity import mask_id_number
from gateway.domain.outbox import (
    DeliverTransfer,
    NotifyTransferOutcome,
    delivery_message_id,
    transfer_outcome_message_id,
)
from gateway.domain.policy import beijing_day, check_transfer_limits, gives_its_place_back
from gateway.domain.provinces import effective_policy
from gateway.domain.transfers import (
    Decision,
    Transfer,
    TransferConfirmation,
    TransferInstruction,
    TransferQuery,
    TransferState,
    delivery_deadline,
    return_deadline,
    validate_confirmation,
    validate_instruction,
    validate_message_id,
)
from gateway.usecases.auth import PayloadDecoder, authenticate, require_addressed_to_gateway
from gateway.usecases.bindings import binding_not_found
from gateway.usecases.context import UseCaseContext
from gateway.usecases.handoff import as_decided, enqueue_transfer_message
from gateway.usecases.idempotency import payload_digest, run_once
from gateway.usecases.ports import SubmissionFacts, UnitOfWork
from gateway.usecases.provinces import require_active, require_regime
from gateway.usecases.settlements import assign_to_open_window


@dataclass(frozen=True, slots=True)
class ReceiptAnswer:
    """A state-changing call's answer: the signed receipt (serialised envelope) and what it says."""

    receipt: bytes
    replay: bool
    subject_id: str
    state: TransferState


def enqueue_outcome(ctx: UseCaseContext, uow: UnitOfWork, transfer: Transfer, state: TransferState, reason: str,
                    now_at: datetime) -> None:
    """Both provinces are told every final state, once each (de-duplicated by message_id)."""
    decided = as_decided(transfer, state, reason, now_at)
    for province in (transfer.giver_province, transfer.receiver_province):
        enqueue_transfer_message(ctx.handoff, uow, NotifyTransferOutcome(state, reason), province,
                                 transfer_outcome_message_id(transfer.transfer_id, state), decided, now_at)


def change_transfer_state(uow: UnitOfWork, transfer: Transfer, from_state: TransferState, to: TransferState,
                          reason: str, now: datetime) -> bool:
    """Move the transfer from `from_state` to `to` (False, and nothing changed, if it is no longer there).

    Every change of a transfer's state goes through here: a change that makes it fail gives its place back
    (D10, D12: policy.gives_its_place_back), and this is the one place that does so.
    """
    if not uow.transfers.change_state(transfer.transfer_id, [from_state], to, reason, now):
        return False
    if gives_its_place_back(from_state, to):
        if transfer.binding_id:
            uow.bindings.add_used(transfer.binding_id, -transfer.amount_fen)
        giver_ref = uow.transfers.giver_ref(transfer.transfer_id)
        assert giver_ref is not None, "the transfer was just changed"
        uow.transfers.release_daily_slot(giver_ref, beijing_day(transfer.created_at))
    return True


def return_unconfirmed(ctx: UseCaseContext, uow: UnitOfWork, transfer: Transfer, now: datetime) -> bool:
    """D13: a DELIVERED transfer past its deadline is RETURNED, both provinces told; False if it already moved."""
    if not change_transfer_state(uow, transfer, TransferState.DELIVERED, TransferState.RETURNED,
                                 reasons.CONFIRMATION_DEADLINE_PASSED, now):
        return False
    enqueue_outcome(ctx, uow, transfer, TransferState.RETURNED, reasons.CONFIRMATION_DEADLINE_PASSED, now)
    tell_operators_it_failed(ctx, uow, transfer, TransferState.RETURNED, reasons.CONFIRMATION_DEADLINE_PASSED)
    return True


def tell_operators_it_failed(ctx: UseCaseContext, uow: UnitOfWork, transfer: Transfer, state: TransferState,
                             reason: str) -> None:
    """A warning once the transfer's end is committed (ids, provinces and the reason only: D19)."""
    uow.after_commit(lambda: ctx.oplog.transfer_failed(transfer.transfer_id, transfer.giver_province,
                                                        transfer.receiver_province, state.value, reason))


def _settlement_suspended(role: str, field: str) -> FailedPrecondition:
    return FailedPrecondition(f"the {role}'s networked settlement is suspended (D3)",
                              reason=reasons.SETTLEMENT_SUSPENDED,
                              field=field)


def _require_binding(facts: SubmissionFacts, instruction: TransferInstruction, giver_ref: bytes,
                     receiver_ref: bytes) -> Binding:
    """D10: an ACTIVE binding between exactly this giver and receiver; D3: neither of them suspended."""
    binding = facts.binding
    header = instruction.header
    if binding is None or not binding.has_party(header.sender):
        # NOT_FOUND, as for every unknown reference: not a stored refusal, like an unknown transfer on confirm.
        # Other provinces' bindings too: a mismatch would tell the sender that the id exists.
        raise binding_not_found()
    if (binding.giver_ref, binding.receiver_ref, binding.giver_province, binding.receiver_province) != (
            giver_ref, receiver_ref, header.sender, header.receiver):
        raise FailedPrecondition("the binding is not between this giver and this receiver",
                                 reason=reasons.BINDING_MISMATCH,
                                 field="binding_id")
    if suspended := facts.suspended_party:
        raise _settlement_suspended(suspended, f"{suspended}.id_number")
    if binding.state is not BindingState.ACTIVE:
        raise FailedPrecondition(f"the binding is {binding.state.value}, not ACTIVE", reason=reasons.BINDING_NOT_ACTIVE,
                                 field="binding_id")
    return binding


def transfer_not_found() -> NotFound:
    """For an unknown transfer and for other provinces' alike: a province learns nothing of transfers not its own."""
    return NotFound("no such transfer", reason=reasons.TRANSFER_NOT_FOUND, field="transfer_id")


def _transfer_id_taken() -> AlreadyExists:
    return AlreadyExists("this transfer_id is taken by another province's transfer; use a new id",
                         reason=reasons.TRANSFER_ID_TAKEN, field="header.message_id")


def submit_transfer(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                    decode: PayloadDecoder[TransferInstruction]) -> ReceiptAnswer:
    now = ctx.clock.now()
    with ctx.uow() as uow:
        instruction = authenticate(uow, envelope, decode, peer, now, ctx)
        validate_instruction(instruction, today=now.astimezone(BEIJING).date())
        header = instruction.header
        transfer_id = header.message_id
        digest = payload_digest(envelope.payload)
        giver_ref = ctx.hasher.ref(instruction.giver.id_number)
        receiver_ref = ctx.hasher.ref(instruction.receiver.id_number)

        def accept() -> bytes:
            giver_province = require_active(uow.provinces.get(header.sender), header.sender, "header.sender")
            receiver_province = require_active(uow.provinces.get(header.receiver), header.receiver, "header.receiver")
            require_regime(giver_province, receiver_province, quota=False)
            # Read together (on PostgreSQL two round trips, not four). The giver's day is counted before the
            # binding is read: its row's lock decides one giver's submissions one at a time (PostgreSQL), so the
            # binding and the day's count are read as they stand. The binding is locked too: its used amount (D10)
            # is read, checked and added to by one submission at a time, two on either side of Beijing midnight
            # as well.
            # The transfer counts against the day (D12) and, once stored, its binding (D10) until it fails
            # (change_transfer_state gives the place back); a refusal counts nothing.
            day = beijing_day(now)
            facts = uow.submissions.read(transfer_id, giver_ref, header.sender, receiver_ref, header.receiver, day,
                                         instruction.binding_id)
            if facts.transfer_id_taken:
                uow.transfers.release_daily_slot(giver_ref, day)  # a stored refusal commits: count nothing
                raise _transfer_id_taken()
            earlier_today = facts.earlier_today
            try:
                binding = _require_binding(facts, instruction, giver_ref, receiver_ref)
                policy = effective_policy(giver_province.policy)
                limits = check_transfer_limits(instruction.amount_fen, earlier_today, now, policy,
                                               binding.authorised_amount_fen or None, binding.used_amount_fen)
                if limits:
                    raise FailedPrecondition("refused by policy: " + ", ".join(v.reason for v in limits),
                                             reason=limits[0].reason, field=limits[0].field or None)
            except FailedPrecondition:
                uow.transfers.release_daily_slot(giver_ref, day)  # a stored refusal commits: count nothing
                raise
            assert policy.return_hour is not None and policy.delivery_deadline_seconds is not None
            returns_at = return_deadline(now, instruction.expires_at, policy.return_hour)
            transfer = Transfer(
                transfer_id=transfer_id, state=TransferState.RECEIVED, giver_province=header.sender,
                receiver_province=header.receiver, giver_id_masked=mask_id_number(instruction.giver.id_number),
                receiver_id_masked=mask_id_number(instruction.receiver.id_number),
                amount_fen=instruction.amount_fen, currency=instruction.currency, created_at=now, updated_at=now,
                return_deadline=returns_at,
                delivery_deadline=delivery_deadline(now, policy.delivery_deadline_seconds, returns_at),
                instruction_sha256=digest, binding_id=instruction.binding_id,
            )
            if not uow.transfers.add(transfer, giver_ref, receiver_ref, envelope):
                # Another province's submission of the same id got there first (ids are unique per sender).
                uow.transfers.release_daily_slot(giver_ref, day)
                raise _transfer_id_taken()
            if transfer.binding_id:
                uow.bindings.add_used(transfer.binding_id, transfer.amount_fen)
            enqueue_transfer_message(ctx.handoff, uow, DeliverTransfer(), header.receiver,
                                     delivery_message_id(transfer_id), transfer, now, envelope)
            return ctx.receipts.issue(request_sender=header.sender, request_message_id=transfer_id,
                                      request_sha256=digest, request_payload_type=decode.type_name,
                                      subject_id=transfer_id, state=TransferState.RECEIVED.value, at=now)

        with ctx.in_flight.hold(header.sender, transfer_id):
            receipt, replay = run_once(uow, header.sender, transfer_id, decode.type_name, digest, now, accept)
    return ReceiptAnswer(receipt, replay, transfer_id, TransferState.RECEIVED)


def confirm_transfer(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                     decode: PayloadDecoder[TransferConfirmation]) -> ReceiptAnswer:
    now = ctx.clock.now()
    with ctx.uow() as uow:
        confirmation = authenticate(uow, envelope, decode, peer, now, ctx)
        validate_confirmation(confirmation)
        header = confirmation.header
        require_addressed_to_gateway(header, "a confirmation")
        transfer = uow.transfers.get(confirmation.transfer_id)
        if transfer is None or header.sender not in (transfer.giver_province, transfer.receiver_province):
            raise transfer_not_found()
        if header.sender != transfer.receiver_province:
            raise PermissionDenied("only the receiver's province may confirm a transfer (D14)",
                                   reason=reasons.NOT_RECEIVER_PROVINCE, field="header.sender")
        digest = payload_digest(envelope.payload)
        final = TransferState.COMMITTED if confirmation.decision is Decision.CREDITED else TransferState.DECLINED
        reason = confirmation.decline_reason if final is TransferState.DECLINED else ""

        def decide() -> bytes:
            require_active(uow.provinces.get(header.sender), header.sender, "header.sender")
            if transfer.state is TransferState.RECEIVED:
                # The receiver's answer can overtake the gateway's record of the delivery: it implies it.
                change_transfer_state(uow, transfer, TransferState.RECEIVED, TransferState.DELIVERED, "", now)
            # The deadline is the rule, not the sweeper's timing: an answer that comes after it returns
            # the transfer (once) and is refused, however far behind the sweep is.
            if now >= transfer.return_deadline and return_unconfirmed(ctx, uow, transfer, now):
                raise FailedPrecondition("the confirmation came after the transfer's deadline; the transfer has "
                                         "been returned to the giver (D13)",
                                         reason=reasons.CONFIRMATION_DEADLINE_PASSED, field="transfer_id")
            # Money moves at the credit: a party suspended since the submission can no longer give or receive
            # (D3). The province may decline instead, or the transfer returns at its deadline.
            if (final is TransferState.COMMITTED and not transfer.state.is_final
                    and (suspended := uow.transfers.suspended_party(transfer.transfer_id))):
                raise _settlement_suspended(suspended, "transfer_id")
            if not change_transfer_state(uow, transfer, TransferState.DELIVERED, final, reason, now):
                # The state as it is now (a concurrent answer or the sweep may have moved it since it was read).
                current = uow.transfers.get(transfer.transfer_id)
                state = (current or transfer).state.value
                raise FailedPrecondition(f"the transfer is already {state} and cannot change",
                                         reason=reasons.TRANSFER_ALREADY_FINAL, field="transfer_id")
            if final is TransferState.COMMITTED:
                assign_to_open_window(uow, ctx.settlement, transfer.transfer_id, now)
            enqueue_outcome(ctx, uow, transfer, final, reason, now)
            return ctx.receipts.issue(request_sender=header.sender, request_message_id=header.message_id,
                                      request_sha256=digest, request_payload_type=decode.type_name,
                                      subject_id=transfer.transfer_id, state=final.value, at=now)

        with ctx.in_flight.hold(header.sender, header.message_id):
            receipt, replay = run_once(uow, header.sender, header.message_id, decode.type_name, digest, now, decide)
    return ReceiptAnswer(receipt, replay, transfer.transfer_id, final)


def get_transfer(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                 decode: PayloadDecoder[TransferQuery]) -> Transfer:
    now = ctx.clock.now()
    with ctx.uow(read_only=True) as uow:
        query = authenticate(uow, envelope, decode, peer, now, ctx)
        validate_message_id(query.header.message_id)
        require_addressed_to_gateway(query.header, "a transfer query")
        validate_message_id(query.transfer_id, field="transfer_id")
        transfer = uow.transfers.get(query.transfer_id, with_history=True)
        if transfer is None or query.header.sender not in (transfer.giver_province, transfer.receiver_province):
            raise transfer_not_found()  # only the two provinces of a transfer may read it (D14)
        return transfer
