"""The operators' dashboard: one consistent snapshot of provinces, recent changes, flows and stuck transfers."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from gateway.domain.monitoring import (
    DashboardSnapshot,
    StuckTransfer,
    TransferFilter,
    pair_flows,
    province_flows,
)
from gateway.domain.transfers import FINAL_STATES, TransferState
from gateway.usecases.context import UseCaseContext

MAX_RECENT = 500
MAX_STUCK = 100
WINDOWS_SHOWN = 5
NOT_FINAL = tuple(state for state in TransferState if state not in FINAL_STATES)


def dashboard_snapshot(ctx: UseCaseContext, stuck_after: timedelta, recent: int = 50) -> DashboardSnapshot:
    """What an operator sees now: read in one unit of work, so the parts agree with each other.

    Stuck: not final and created before now - `stuck_after`, oldest first, at most MAX_STUCK of them.
    """
    recent = max(0, min(recent, MAX_RECENT))
    now = ctx.clock.now()
    with ctx.uow(read_only=True) as uow:
        provinces = tuple(sorted(uow.provinces.list(), key=lambda province: province.code))
        changes = uow.transfers.newest_changes(recent) if recent else []
        stats = dataclasses.replace(uow.transfers.stats(), quota_pairs=uow.totals.quota_pairs())
        waiting = uow.transfers.page(TransferFilter(states=NOT_FINAL, created_to=now - stuck_after), None,
                                     MAX_STUCK + 1)
        # Apart: clearing months' ids ("Q2026-03") sort after every transfers' window and would hide them.
        windows = tuple(uow.settlements.newest_first((), None, WINDOWS_SHOWN, clearing=False))
        months = tuple(uow.settlements.newest_first((), None, WINDOWS_SHOWN, clearing=True))
    stuck = tuple(
        StuckTransfer(transfer.transfer_id, transfer.state, transfer.giver_province, transfer.receiver_province,
                      transfer.amount_fen, transfer.created_at, transfer.updated_at, now - transfer.created_at,
                      transfer.reason)
        for transfer in waiting[:MAX_STUCK]
    )
    pairs = pair_flows(stats.transfers)
    return DashboardSnapshot(
        at=now,
        stuck_after=stuck_after,
        provinces=provinces,
        recent_changes=tuple(changes),
        stats=stats,
        pairs=pairs,
        flows=province_flows(pairs, [province.code for province in provinces]),
        stuck=stuck,
        stuck_more=len(waiting) > MAX_STUCK,
        windows=windows,
        clearing_months=months,
    )
