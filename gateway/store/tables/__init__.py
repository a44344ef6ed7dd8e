"""The database schema as SQLAlchemy 2.0 typed mappings (SQLite and PostgreSQL alike), one module per aggregate."""

from __future__ import annotations

from sqlalchemy import Table

from gateway.store.tables.audit import AuditCheckpointRow, AuditEntryRow, AuditHeadRow
from gateway.store.tables.base import Base, UtcDateTime
from gateway.store.tables.bindings import BindingRow, MemberSuspensionRow
from gateway.store.tables.outbox import OutboxRow
from gateway.store.tables.quotas import (
    ClearingTotalRow,
    ConsumptionReversalRow,
    ConsumptionRow,
    QuotaChangeRow,
    QuotaRow,
    QuotaTotalRow,
)
from gateway.store.tables.relations import RelationQueryRow
from gateway.store.tables.requests import RequestRow
from gateway.store.tables.routing import GatewayKeyRow, ProvinceKeyRow, ProvinceRow, RoutingVersionRow
from gateway.store.tables.settlements import SettlementPairRow, SettlementStatementRow, SettlementWindowRow
from gateway.store.tables.totals import TOTAL_SHARDS, OutboxTotalRow, TransferTotalRow
from gateway.store.tables.transfers import GiverDayRow, TransferEventRow, TransferRow

# The tables as SQLAlchemy Core sees them, for building statements.
provinces_t: Table = ProvinceRow.__table__  # type: ignore[assignment]
keys_t: Table = ProvinceKeyRow.__table__  # type: ignore[assignment]
routing_version_t: Table = RoutingVersionRow.__table__  # type: ignore[assignment]
requests_t: Table = RequestRow.__table__  # type: ignore[assignment]
transfers_t: Table = TransferRow.__table__  # type: ignore[assignment]
events_t: Table = TransferEventRow.__table__  # type: ignore[assignment]
outbox_t: Table = OutboxRow.__table__  # type: ignore[assignment]
bindings_t: Table = BindingRow.__table__  # type: ignore[assignment]
suspensions_t: Table = MemberSuspensionRow.__table__  # type: ignore[assignment]
giver_days_t: Table = GiverDayRow.__table__  # type: ignore[assignment]
audit_t: Table = AuditEntryRow.__table__  # type: ignore[assignment]
gateway_keys_t: Table = GatewayKeyRow.__table__  # type: ignore[assignment]
audit_head_t: Table = AuditHeadRow.__table__  # type: ignore[assignment]
checkpoints_t: Table = AuditCheckpointRow.__table__  # type: ignore[assignment]
windows_t: Table = SettlementWindowRow.__table__  # type: ignore[assignment]
pairs_t: Table = SettlementPairRow.__table__  # type: ignore[assignment]
statements_t: Table = SettlementStatementRow.__table__  # type: ignore[assignment]
relation_queries_t: Table = RelationQueryRow.__table__  # type: ignore[assignment]
transfer_totals_t: Table = TransferTotalRow.__table__  # type: ignore[assignment]
outbox_totals_t: Table = OutboxTotalRow.__table__  # type: ignore[assignment]
quotas_t: Table = QuotaRow.__table__  # type: ignore[assignment]
quota_changes_t: Table = QuotaChangeRow.__table__  # type: ignore[assignment]
consumptions_t: Table = ConsumptionRow.__table__  # type: ignore[assignment]
reversals_t: Table = ConsumptionReversalRow.__table__  # type: ignore[assignment]
quota_totals_t: Table = QuotaTotalRow.__table__  # type: ignore[assignment]
clearing_totals_t: Table = ClearingTotalRow.__table__  # type: ignore[assignment]

REASON_MAX = 64  # the width of every stored reason (transfers, their events, bindings, rejections)

__all__ = [
    "REASON_MAX",
    "TOTAL_SHARDS",
    "AuditCheckpointRow",
    "AuditEntryRow",
    "AuditHeadRow",
    "Base",
    "BindingRow",
    "ClearingTotalRow",
    "ConsumptionReversalRow",
    "ConsumptionRow",
    "GatewayKeyRow",
    "GiverDayRow",
    "MemberSuspensionRow",
    "OutboxRow",
    "OutboxTotalRow",
    "ProvinceKeyRow",
    "ProvinceRow",
    "QuotaChangeRow",
    "QuotaRow",
    "QuotaTotalRow",
    "RelationQueryRow",
    "RequestRow",
    "RoutingVersionRow",
    "SettlementPairRow",
    "SettlementStatementRow",
    "SettlementWindowRow",
    "TransferEventRow",
    "TransferRow",
    "TransferTotalRow",
    "UtcDateTime",
    "audit_head_t",
    "audit_t",
    "bindings_t",
    "checkpoints_t",
    "clearing_totals_t",
    "consumptions_t",
    "events_t",
    "gateway_keys_t",
    "giver_days_t",
    "keys_t",
    "outbox_t",
    "outbox_totals_t",
    "pairs_t",
    "provinces_t",
    "quota_changes_t",
    "quota_totals_t",
    "quotas_t",
    "relation_queries_t",
    "requests_t",
    "reversals_t",
    "routing_version_t",
    "statements_t",
    "suspensions_t",
    "transfer_totals_t",
    "transfers_t",
    "windows_t",
]
