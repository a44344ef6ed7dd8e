"""Quotas (Q2-Q10): a binding's figures, changes, consumptions and reversals; the totals move with them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.engine import Dialect

from gateway.domain.quota import (
    Consumption,
    ConsumptionKind,
    Quota,
    QuotaBalance,
    QuotaChange,
    QuotaEvent,
    Reversal,
)
from gateway.store.prepared import Cursor, Prepared
from gateway.store.tables import consumptions_t, quota_changes_t, quotas_t, reversals_t

if TYPE_CHECKING:  # statements.py imports this module's statements, and audit.py imports statements.py
    from gateway.store.repositories.audit import SqlAuditLog
    from gateway.store.repositories.totals import SqlTotals

QUOTA_VIEW = [quotas_t.c.binding_id, quotas_t.c.giver_province, quotas_t.c.receiver_province, quotas_t.c.granted_fen,
              quotas_t.c.consumed_fen, quotas_t.c.released_fen, quotas_t.c.version, quotas_t.c.ended_at,
              quotas_t.c.updated_at]
CONSUMPTION_VIEW = [consumptions_t.c.consumption_id, consumptions_t.c.binding_id, consumptions_t.c.giver_province,
                    consumptions_t.c.receiver_province, consumptions_t.c.settlement_ref, consumptions_t.c.kind,
                    consumptions_t.c.requested_fen, consumptions_t.c.drawn_fen, consumptions_t.c.reversed_fen,
                    consumptions_t.c.clearing_window_id, consumptions_t.c.care_pooling_area,
                    consumptions_t.c.created_at]


def _b(name: str) -> Any:
    return bindparam(name)


class QuotaStatements:
    """The quotas' statements, compiled once per engine."""

    def __init__(self, dialect: Dialect, insert: Callable[..., Any]) -> None:
        def p(statement: Any) -> Prepared:
            return Prepared(statement, dialect)

        q, c, e = quotas_t.c, consumptions_t.c, quota_changes_t.c
        self.get = p(select(*QUOTA_VIEW).where(q.binding_id == _b("w_id")))
        # The row every change of one quota takes first: two consumptions at once are decided one at a time
        # (SQLite: one writer at a time; it renders no FOR UPDATE).
        self.lock = p(select(*QUOTA_VIEW).where(q.binding_id == _b("w_id")).with_for_update())
        self.create = p(insert(quotas_t).on_conflict_do_nothing())
        # Conditional on the version read under the lock: a lost update cannot pass unnoticed.
        self.apply = p(update(quotas_t).where(and_(q.binding_id == _b("w_id"), q.version == _b("w_version")))
                       .values(granted_fen=_b("granted_fen"), consumed_fen=_b("consumed_fen"),
                               released_fen=_b("released_fen"), version=_b("version"), updated_at=_b("at")))
        self.end = p(update(quotas_t).where(and_(q.binding_id == _b("w_id"), q.ended_at.is_(None)))
                     .values(ended_at=_b("at")))
        self.insert_change = p(quota_changes_t.insert())
        self.change = p(select(quota_changes_t).where(and_(e.binding_id == _b("w_id"), e.version == _b("w_version"))))
        self.insert_consumption = p(insert(consumptions_t).on_conflict_do_nothing().returning(c.consumption_id))
        self.consumption = p(select(*CONSUMPTION_VIEW).where(and_(c.receiver_province == _b("w_province"),
                                                                  c.consumption_id == _b("w_id"))))
        self.consumption_by_ref = p(select(*CONSUMPTION_VIEW).where(and_(c.receiver_province == _b("w_province"),
                                                                         c.settlement_ref == _b("w_ref"))))
        self.add_reversed = p(update(consumptions_t).where(and_(c.receiver_province == _b("w_province"),
                                                                c.consumption_id == _b("w_id")))
                              .values(reversed_fen=c.reversed_fen + _b("amount")))
        self.reversal = p(select(reversals_t).where(and_(reversals_t.c.sender == _b("w_sender"),
                                                         reversals_t.c.message_id == _b("w_id"))))
        self.insert_reversal = p(insert(reversals_t).on_conflict_do_nothing().returning(reversals_t.c.message_id))
        # A binding's consumptions newest first: one range of ix_consumptions_binding_created_at.
        newest = select(*CONSUMPTION_VIEW).where(c.binding_id == _b("w_id"))
        order = (c.created_at.desc(), c.consumption_id.desc())
        self.page_first = p(newest.order_by(*order).limit(_b("limit")))
        self.page_after = p(newest.where(c.created_at <= _b("at"), (c.created_at < _b("at"))
                                         | (c.consumption_id < _b("after_id"))).order_by(*order).limit(_b("limit")))


def _quota(row: Sequence[Any]) -> Quota:
    binding_id, giver, receiver, granted, consumed, released, version, ended_at, updated_at = row
    return Quota(binding_id, giver, receiver, QuotaBalance(granted, consumed, released), version,
                 ended_at is not None, updated_at)


def _consumption(row: Sequence[Any]) -> Consumption:
    (consumption_id, binding_id, giver, receiver, ref, kind, requested, drawn, reversed_fen, month, area,
     created_at) = row
    return Consumption(consumption_id, binding_id, giver, receiver, ref, ConsumptionKind(kind), requested, drawn,
                       reversed_fen, month, area, created_at)


class SqlQuotaRepository:
    def __init__(self, cursor: Cursor, statements: QuotaStatements, totals: SqlTotals, audit: SqlAuditLog) -> None:
        self._cursor, self._s, self._totals, self._audit = cursor, statements, totals, audit

    def get(self, binding_id: str, lock: bool = False) -> Quota | None:
        """The quota; with `lock`, no other transaction changes it until this one ends."""
        row = self._cursor.first(self._s.lock if lock else self._s.get, w_id=binding_id)
        return None if row is None else _quota(row)

    def create(self, binding_id: str, giver_province: str, receiver_province: str, at: datetime) -> None:
        """An empty quota for the binding, if it has none yet (its first grant, or its end)."""
        self._cursor.run(self._s.create, binding_id=binding_id, giver_province=giver_province,
                         receiver_province=receiver_province, granted_fen=0, consumed_fen=0, released_fen=0,
                         version=0, ended_at=None, updated_at=at)

    def apply(self, quota: Quota, event: QuotaEvent, consumption_count: int = 0) -> None:
        """Store the quota's figures after `event` (its version quota.version + 1) with the event, and move the
        pair's totals by the difference, in this transaction."""
        after, before = event.balance, quota.balance
        assert event.version == quota.version + 1 and after.conserved, "Q3: conservation holds after every change"
        changed = self._cursor.run(self._s.apply, w_id=quota.binding_id, w_version=quota.version,
                                   granted_fen=after.granted_fen, consumed_fen=after.consumed_fen,
                                   released_fen=after.released_fen, version=event.version, at=event.at)
        assert changed == 1, "the quota is changed under its lock only"
        self._cursor.run(self._s.insert_change, binding_id=event.binding_id, version=event.version,
                         change=event.change.value, amount_fen=event.amount_fen, released_fen=event.released_fen,
                         granted_after_fen=after.granted_fen, consumed_after_fen=after.consumed_fen,
                         released_after_fen=after.released_fen, cause_id=event.cause_id,
                         consumption_id=event.consumption_id, clearing_window_id=event.clearing_window_id,
                         at=event.at, consumption_reversed_fen=event.consumption_reversed_fen)
        self._totals.quota_moved(quota.giver_province, quota.receiver_province, quota.binding_id,
                                 granted=after.granted_fen - before.granted_fen,
                                 consumed=after.consumed_fen - before.consumed_fen,
                                 released=after.released_fen - before.released_fen, consumptions=consumption_count)
        self._audit.record("quota", quota.binding_id, event.change.value, event.at,
                           f"v={event.version} amount_fen={event.amount_fen} released_fen={event.released_fen} "
                           f"granted={after.granted_fen} consumed={after.consumed_fen} released={after.released_fen} "
                           f"cause={event.cause_id}")

    def end(self, binding_id: str, at: datetime) -> bool:
        """Mark the quota released by its binding's end; False if it was already (Q8: once only)."""
        return self._cursor.run(self._s.end, w_id=binding_id, at=at) == 1

    def event(self, binding_id: str, version: int) -> QuotaEvent | None:
        row = self._cursor.first(self._s.change, w_id=binding_id, w_version=version)
        if row is None:
            return None
        v = dict(zip(self._s.change.columns, row, strict=True))
        return QuotaEvent(v["binding_id"], v["version"], QuotaChange(v["change"]), v["amount_fen"], v["released_fen"],
                          QuotaBalance(v["granted_after_fen"], v["consumed_after_fen"], v["released_after_fen"]),
                          v["cause_id"], v["consumption_id"], v["clearing_window_id"], v["at"],
                          v["consumption_reversed_fen"])

    def add_consumption(self, consumption: Consumption) -> bool:
        """Store a consumption; False (nothing stored) if its id or its settlement reference is taken."""
        c = consumption
        inserted = self._cursor.first(
            self._s.insert_consumption, receiver_province=c.receiver_province, consumption_id=c.consumption_id,
            settlement_ref=c.settlement_ref, binding_id=c.binding_id, giver_province=c.giver_province,
            kind=c.kind.value, requested_fen=c.requested_fen, drawn_fen=c.drawn_fen, reversed_fen=c.reversed_fen,
            clearing_window_id=c.month, care_pooling_area=c.care_pooling_area, created_at=c.created_at)
        if inserted is None:
            return False
        self._totals.clearing_moved(c.month, c.giver_province, c.receiver_province, c.consumption_id,
                                    consumed=c.drawn_fen, consumptions=1)
        return True

    def consumption(self, province: str, consumption_id: str) -> Consumption | None:
        row = self._cursor.first(self._s.consumption, w_province=province, w_id=consumption_id)
        return None if row is None else _consumption(row)

    def consumption_by_ref(self, province: str, settlement_ref: str) -> Consumption | None:
        row = self._cursor.first(self._s.consumption_by_ref, w_province=province, w_ref=settlement_ref)
        return None if row is None else _consumption(row)

    def add_reversal(self, reversal: Reversal, consumption: Consumption) -> bool:
        """Store a reversal and count it against its consumption; False (nothing stored) if its id is taken."""
        r = reversal
        inserted = self._cursor.first(
            self._s.insert_reversal, sender=r.sender, message_id=r.message_id, consumption_id=r.consumption_id,
            binding_id=r.binding_id, amount_fen=r.amount_fen, released_fen=r.released_fen, reason=r.reason,
            clearing_window_id=r.clearing_window_id, at=r.at)
        if inserted is None:
            return False
        self._cursor.run(self._s.add_reversed, w_province=consumption.receiver_province,
                         w_id=consumption.consumption_id, amount=r.amount_fen)
        self._totals.clearing_moved(r.clearing_window_id, consumption.giver_province, consumption.receiver_province,
                                    r.message_id, reversed_=r.amount_fen, reversals=1)
        return True

    def reversal(self, sender: str, message_id: str) -> Reversal | None:
        row = self._cursor.first(self._s.reversal, w_sender=sender, w_id=message_id)
        if row is None:
            return None
        v = dict(zip(self._s.reversal.columns, row, strict=True))
        return Reversal(v["sender"], v["message_id"], v["consumption_id"], v["binding_id"], v["amount_fen"],
                        v["released_fen"], v["reason"], v["clearing_window_id"], v["at"])

    def consumptions(self, binding_id: str, before: tuple[datetime, str] | None, limit: int) -> list[Consumption]:
        """The binding's consumptions newest first, from just before `before` (created_at, consumption_id)."""
        if before is None:
            rows = self._cursor.all(self._s.page_first, w_id=binding_id, limit=limit)
        else:
            rows = self._cursor.all(self._s.page_after, w_id=binding_id, at=before[0], after_id=before[1],
                                    limit=limit)
        return [_consumption(row) for row in rows]
