"""A quota's changes as every quota use case makes them: under its lock, stored with their event, told to the
provinces through the outbox; the clearing month a draw or reversal belongs to; the release when a binding ends."""

from __future__ import annotations

from datetime import datetime

from gateway.domain.bindings import Binding
from gateway.domain.outbox import (
    NotifyConsumption,
    NotifyQuota,
    consumption_notice_message_id,
    quota_notice_message_id,
    reversal_notice_message_id,
)
from gateway.domain.quota import Quota, QuotaChange, QuotaEvent, clearing_span, next_clearing_span, release_unused
from gateway.domain.settlement import WindowState
from gateway.usecases.ports import UnitOfWork

MAX_MONTH_HOPS = 1200  # a hundred years of closed months: a clock gone wrong, not a calendar


def locked_quota(uow: UnitOfWork, binding: Binding, at: datetime) -> Quota:
    """The binding's quota, created empty if it has none yet, locked until the transaction ends.

    The binding's row is locked first by the caller (bindings.get(lock=True), or its change of state): every
    quota change takes the binding's lock, then the quota's, in that order.
    """
    quota = uow.quotas.get(binding.binding_id, lock=True)
    if quota is None:
        uow.quotas.create(binding.binding_id, binding.giver_province, binding.receiver_province, at)
        quota = uow.quotas.get(binding.binding_id, lock=True)
        assert quota is not None
    return quota


def open_clearing_month(uow: UnitOfWork, now: datetime) -> str:
    """Q10: the clearing month open now ("Q2026-03"), or, if it is closed already, the first later one that is
    not, as committed transfers go to the next window (D16). Its row is held against closing meanwhile."""
    span = clearing_span(now)
    for _ in range(MAX_MONTH_HOPS):
        if uow.settlements.state_for_commit(span, now) is WindowState.OPEN:
            return span.window_id
        span = next_clearing_span(span)
    raise RuntimeError(f"no open clearing month within {MAX_MONTH_HOPS} months of {now.isoformat()}")


def record_change(uow: UnitOfWork, quota: Quota, event: QuotaEvent, consumption_count: int = 0) -> None:
    """Store the change (conservation asserted) and queue its notices (Q6, Q8), each once per message id.

    The receiver's province hears every change of what it can draw; the giver's province every consumption and
    reversal (NotifyConsumption) and every release of unused quota (NotifyQuota: LOWERED, RELEASED), whose
    frozen amount it unfreezes. A reversal after the binding ended reaches the giver as NotifyConsumption only,
    its released_fen saying so: one notice per movement of the giver's money.
    """
    assert event.balance.conserved, "Q3: every figure >= 0 and available = granted - consumed - released"
    uow.quotas.apply(quota, event, consumption_count)
    binding_id, at = quota.binding_id, event.at
    notice_id = quota_notice_message_id(binding_id, event.version)
    uow.outbox.enqueue(quota.receiver_province, NotifyQuota(event.version), notice_id, binding_id, at)
    if event.change in (QuotaChange.LOWERED, QuotaChange.RELEASED):
        uow.outbox.enqueue(quota.giver_province, NotifyQuota(event.version), notice_id, binding_id, at)
    elif event.change is QuotaChange.CONSUMED:
        uow.outbox.enqueue(quota.giver_province, NotifyConsumption(event.version),
                           consumption_notice_message_id(quota.receiver_province, event.consumption_id), binding_id,
                           at)
    elif event.change is QuotaChange.REVERSED:
        uow.outbox.enqueue(quota.giver_province, NotifyConsumption(event.version),
                           reversal_notice_message_id(quota.receiver_province, event.cause_id), binding_id, at)


def release_unused_quota(uow: UnitOfWork, binding: Binding, cause_id: str, at: datetime) -> int | None:
    """Q8: the binding has just ended (its change of state is this transaction's): its unused quota goes back to
    the giver, once, both provinces told the amount. None when it has no quota or it was released already.

    Every path that ends a binding calls this in the transaction that ends it; quotas.ended_at makes a second
    call a no-op. A suspension (D3) ends nothing and releases nothing.
    """
    quota = uow.quotas.get(binding.binding_id, lock=True)
    if quota is None or not uow.quotas.end(binding.binding_id, at):
        return None
    balance, unused = release_unused(quota.balance)
    record_change(uow, quota, QuotaEvent(binding.binding_id, quota.version + 1, QuotaChange.RELEASED, unused, unused,
                                         balance, cause_id, "", "", at))
    return unused
