"""Outbox use cases: take due messages, record what the provinces answered, and enforce deadlines (D13)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from gateway.domain.outbox import (
    DeliverTransfer,
    NotifyBindingOutcome,
    NotifyConsumption,
    NotifyQuota,
    NotifySettlement,
    NotifyTransferOutcome,
    OutboxKind,
    OutboxMessage,
    RequestConsent,
)
from gateway.domain.provinces import Province
from gateway.domain.transfers import Transfer, TransferState
from gateway.usecases.bindings import expire_proposals
from gateway.usecases.context import StoredPayloadTypes, UseCaseContext
from gateway.usecases.outbox_ports import Backoff, OutboxWork, SendResult
from gateway.usecases.ports import UnitOfWork
from gateway.usecases.transfers import (
    change_transfer_state,
    enqueue_outcome,
    return_unconfirmed,
    tell_operators_it_failed,
)

DESTINATION_UNREACHABLE = "DESTINATION_UNREACHABLE"


def _work_for(uow: UnitOfWork, types: StoredPayloadTypes, message: OutboxMessage,
              province: Province) -> OutboxWork | None:
    """What it takes to send `message`, as stored now: the transfer, binding or figures it is about."""
    endpoint, active, subject_id = province.endpoint, province.is_active, message.subject_id
    match message.content:
        case NotifyQuota(version=version) | NotifyConsumption(version=version):
            event = uow.quotas.event(subject_id, version)
            consumption = (uow.quotas.consumption(province_of_binding(uow, subject_id), event.consumption_id)
                           if event is not None and event.consumption_id else None)
            if event is None or (isinstance(message.content, NotifyConsumption) and consumption is None):
                return None
            return OutboxWork(message, endpoint, active, None, None, quota_event=event, consumption=consumption)
        case NotifySettlement():
            statement = uow.settlements.statement(subject_id, message.destination, types.figures)
            return None if statement is None else OutboxWork(message, endpoint, active, None, None,
                                                             figures=statement[0])
        case RequestConsent() | NotifyBindingOutcome():
            binding = uow.bindings.get(subject_id)
            proposal = (uow.bindings.proposal_envelope(subject_id, types.proposal)
                        if isinstance(message.content, RequestConsent) else None)
            return None if binding is None else OutboxWork(message, endpoint, active, None, proposal, binding)
        case DeliverTransfer() | NotifyTransferOutcome():
            transfer = uow.transfers.get(subject_id)
            instruction = (uow.transfers.instruction_envelope(subject_id, types.instruction)
                           if isinstance(message.content, DeliverTransfer) else None)
            return None if transfer is None else OutboxWork(message, endpoint, active, transfer, instruction)


def province_of_binding(uow: UnitOfWork, binding_id: str) -> str:
    """The receiver's province of a quota's binding: its consumptions are keyed by it."""
    quota = uow.quotas.get(binding_id)
    return "" if quota is None else quota.receiver_province


def claim_outbox_work(ctx: UseCaseContext, limit: int, lease: timedelta,
                      skip_destinations: Sequence[str] = ()) -> list[OutboxWork]:
    """Due messages leased to the caller, with what it takes to send them; none for `skip_destinations`."""
    now = ctx.clock.now()
    with ctx.uow() as uow:
        messages = uow.outbox.claim_due(now, limit, now + lease, skip_destinations)
        provinces = {p.code: p for p in uow.provinces.list()} if messages else {}
        work = []
        for message in messages:
            province = provinces.get(message.destination)
            item = None if province is None else _work_for(uow, ctx.stored_types, message, province)
            if item is None:
                uow.outbox.mark_retry(message.id, now + lease, "UNKNOWN_SUBJECT_OR_DESTINATION")
                continue
            work.append(item)
        uow.commit()
    return work


def release_unsent(ctx: UseCaseContext, message_ids: list[int]) -> None:
    """Messages handed to a loop that stops before sending them: due at once, for any gateway's claim."""
    with ctx.uow() as uow:
        uow.outbox.release(message_ids, ctx.clock.now())
        uow.commit()


def _reject_undeliverable(ctx: UseCaseContext, uow: UnitOfWork, transfer: Transfer, now: datetime) -> None:
    uow.outbox.expire_pending(OutboxKind.DELIVER_TRANSFER, transfer.transfer_id, now, DESTINATION_UNREACHABLE)
    if change_transfer_state(uow, transfer, TransferState.RECEIVED, TransferState.REJECTED, DESTINATION_UNREACHABLE,
                             now):
        enqueue_outcome(ctx, uow, transfer, TransferState.REJECTED, DESTINATION_UNREACHABLE, now)
        tell_operators_it_failed(ctx, uow, transfer, TransferState.REJECTED, DESTINATION_UNREACHABLE)


def record_outbox_results(ctx: UseCaseContext, results: list[tuple[OutboxWork, SendResult]],
                          backoff: Backoff) -> None:
    """Record the provinces' answers in one transaction; failed attempts are reported to operators per province."""
    now = ctx.clock.now()
    failed: dict[str, tuple[int, str, datetime]] = {}

    def retry_later(message: OutboxMessage, error: str) -> None:
        retry_at = now + backoff.delay(message.attempts)
        uow.outbox.mark_retry(message.id, retry_at, error)
        count, _, first_retry = failed.get(message.destination, (0, "", retry_at))
        failed[message.destination] = (count + 1, error, min(first_retry, retry_at))

    with ctx.uow() as uow:
        for work, result in results:
            message, transfer = work.message, work.transfer
            if transfer is None:  # a binding or settlement message: acknowledged, or retried
                if result.acknowledged:
                    uow.outbox.mark_done(message.id, now)
                else:
                    retry_later(message, result.reason)
                continue
            if result.acknowledged:
                uow.outbox.mark_done(message.id, now)
                if isinstance(message.content, DeliverTransfer):
                    if result.rejected:
                        if change_transfer_state(uow, transfer, TransferState.RECEIVED, TransferState.REJECTED,
                                                 result.reason, now):
                            enqueue_outcome(ctx, uow, transfer, TransferState.REJECTED, result.reason, now)
                            tell_operators_it_failed(ctx, uow, transfer, TransferState.REJECTED, result.reason)
                    else:
                        # A no-op when the confirmation already overtook this answer.
                        change_transfer_state(uow, transfer, TransferState.RECEIVED, TransferState.DELIVERED, "", now)
            elif isinstance(message.content, DeliverTransfer) and now >= transfer.delivery_deadline:
                _reject_undeliverable(ctx, uow, transfer, now)
            else:
                retry_later(message, result.reason)
        uow.commit()
    for province, (count, error, retry_at) in sorted(failed.items()):
        ctx.oplog.failed_deliveries(province, count, error, retry_at)


def sweep_deadlines(ctx: UseCaseContext, limit: int = 200) -> int:
    """Return unconfirmed transfers and reject undeliverable ones; each happens exactly once (guarded)."""
    now = ctx.clock.now()
    changed = 0
    with ctx.uow() as uow:
        for transfer_id in uow.transfers.undelivered_past_deadline(now, limit):
            transfer = uow.transfers.get(transfer_id)
            if transfer is not None:
                _reject_undeliverable(ctx, uow, transfer, now)
                changed += 1
        for transfer_id in uow.transfers.due_for_return(now, limit):
            transfer = uow.transfers.get(transfer_id)
            if transfer is not None and return_unconfirmed(ctx, uow, transfer, now):
                changed += 1
        changed += expire_proposals(uow, now, limit)
        uow.commit()
    return changed
