"""The running totals behind the operators' reads: moved with every change they count, recounted on demand."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, case, func, select
from sqlalchemy.engine import Dialect

from gateway.domain.monitoring import OutboxFigures, PairStateFigure, Totals
from gateway.domain.quota import QuotaBalance, QuotaPairTotals
from gateway.domain.settlement import PairFigure
from gateway.domain.transfers import TransferState
from gateway.store.prepared import Cursor, Prepared
from gateway.store.tables import (
    TOTAL_SHARDS,
    clearing_totals_t,
    outbox_t,
    outbox_totals_t,
    quota_totals_t,
    quotas_t,
    settlement_totals_t,
    transfer_totals_t,
    transfers_t,
)


def shard_of(key: str) -> int:
    """Which shard a subject's totals go to: the same subject always to the same one."""
    return zlib.crc32(key.encode()) % TOTAL_SHARDS


def aware(value: Any) -> datetime | None:
    """An aggregate (MIN) skips the column's type on some drivers: read SQLite's text as UTC too."""
    if value is None:
        return None
    at: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at if at.tzinfo else at.replace(tzinfo=UTC)


QUOTA_SUMS = ("granted_fen", "consumed_fen", "released_fen", "consumption_count")
CLEARING_SUMS = ("consumed_fen", "reversed_fen", "consumption_count", "reversal_count")


class TotalStatements:
    """The totals' statements, compiled once per engine."""

    def __init__(self, dialect: Dialect, insert: Callable[..., Any]) -> None:
        def p(statement: Any) -> Prepared:
            return Prepared(statement, dialect)

        tt, ot, st, o, t = transfer_totals_t.c, outbox_totals_t.c, settlement_totals_t.c, outbox_t.c, transfers_t.c
        add = insert(transfer_totals_t)
        self.add_transfer = p(add.on_conflict_do_update(
            index_elements=[tt.giver_province, tt.receiver_province, tt.state, tt.shard],
            set_={"count": tt.count + add.excluded.count, "amount_fen": tt.amount_fen + add.excluded.amount_fen}))
        add_outbox = insert(outbox_totals_t)
        self.add_outbox = p(add_outbox.on_conflict_do_update(
            index_elements=[ot.destination, ot.shard],
            set_={"pending": ot.pending + add_outbox.excluded.pending,
                  "attempts": ot.attempts + add_outbox.excluded.attempts, "done": ot.done + add_outbox.excluded.done}))
        add_settlement = insert(settlement_totals_t)
        self.add_settlement = p(add_settlement.on_conflict_do_update(
            index_elements=[st.window_id, st.giver_province, st.receiver_province, st.shard],
            set_={"count": st.count + add_settlement.excluded.count,
                  "amount_fen": st.amount_fen + add_settlement.excluded.amount_fen}))
        # One window's figures: its primary key's range (pairs x shards rows), whatever the window holds.
        self.window_pairs = p(select(st.giver_province, st.receiver_province, func.sum(st.amount_fen),
                                     func.sum(st.count))
                              .where(st.window_id == bindparam("window_id"))
                              .group_by(st.giver_province, st.receiver_province)
                              .having(func.sum(st.count) != 0)
                              .order_by(st.giver_province, st.receiver_province))
        self.settlements = p(select(st.window_id, st.giver_province, st.receiver_province, func.sum(st.count),
                                    func.sum(st.amount_fen))
                             .group_by(st.window_id, st.giver_province, st.receiver_province)
                             .having(func.sum(st.count) != 0))
        self.recount_settlements = p(select(t.settlement_window_id, t.giver_province, t.receiver_province,
                                            func.count(), func.sum(t.amount_fen))
                                     .where(t.state == TransferState.COMMITTED.value, t.settlement_window_id != "")
                                     .group_by(t.settlement_window_id, t.giver_province, t.receiver_province))
        # Zero counts are left out, as a GROUP BY over the rows would leave them.
        self.transfers = p(select(tt.giver_province, tt.receiver_province, tt.state, func.sum(tt.count),
                                  func.sum(tt.amount_fen))
                           .group_by(tt.giver_province, tt.receiver_province, tt.state)
                           .having(func.sum(tt.count) != 0)
                           .order_by(tt.giver_province, tt.receiver_province, tt.state))
        qt, ct, q = quota_totals_t.c, clearing_totals_t.c, quotas_t.c
        add_quota = insert(quota_totals_t)
        self.add_quota = p(add_quota.on_conflict_do_update(
            index_elements=[qt.giver_province, qt.receiver_province, qt.shard],
            set_={name: getattr(qt, name) + getattr(add_quota.excluded, name) for name in QUOTA_SUMS}))
        add_clearing = insert(clearing_totals_t)
        self.add_clearing = p(add_clearing.on_conflict_do_update(
            index_elements=[ct.clearing_window_id, ct.giver_province, ct.receiver_province, ct.shard],
            set_={name: getattr(ct, name) + getattr(add_clearing.excluded, name) for name in CLEARING_SUMS}))
        self.quota_pairs = p(select(qt.giver_province, qt.receiver_province,
                                    *(func.sum(getattr(qt, name)) for name in QUOTA_SUMS))
                             .group_by(qt.giver_province, qt.receiver_province)
                             .order_by(qt.giver_province, qt.receiver_province))
        # The recount reads every quota (operators' check): the count of consumptions is not in it.
        self.recount_quota_pairs = p(select(q.giver_province, q.receiver_province, func.sum(q.granted_fen),
                                            func.sum(q.consumed_fen), func.sum(q.released_fen))
                                     .group_by(q.giver_province, q.receiver_province)
                                     .order_by(q.giver_province, q.receiver_province))
        self.outbox = p(select(ot.destination, func.sum(ot.pending), func.sum(ot.attempts), func.sum(ot.done))
                        .group_by(ot.destination).order_by(ot.destination))
        # An index seek (ix_outbox_status_created_at), however long the outbox's history.
        self.oldest_undelivered = p(select(func.min(o.created_at)).where(o.status == "PENDING"))
        # The recount: what the totals must equal, read from every row (operators' check, not a hot path).
        self.recount_transfers = p(select(t.giver_province, t.receiver_province, t.state, func.count(),
                                          func.sum(t.amount_fen))
                                   .group_by(t.giver_province, t.receiver_province, t.state)
                                   .order_by(t.giver_province, t.receiver_province, t.state))
        self.recount_outbox = p(select(o.destination, func.sum(case((o.status == "PENDING", 1), else_=0)),
                                       func.sum(o.attempts), func.sum(case((o.status == "DONE", 1), else_=0)))
                                .group_by(o.destination).order_by(o.destination))


class SqlTotals:
    """Moves the totals inside the caller's transaction; reads them, or recounts them from the rows.

    The moves of a transaction are gathered and written just before its commit (`flush`), in one order of
    rows for every transaction: concurrent transactions wait for each other's rows briefly but never deadlock
    (two gateways on PostgreSQL), and a transfer added and moved in one transaction writes its rows once.
    """

    def __init__(self, cursor: Cursor, statements: TotalStatements) -> None:
        self._cursor, self._s = cursor, statements
        self._moved_transfers: dict[tuple[str, str, str, int], list[int]] = {}
        self._moved_outbox: dict[tuple[str, int], list[int]] = {}
        self._moved_quotas: dict[tuple[str, str, int], list[int]] = {}
        self._moved_clearing: dict[tuple[str, str, str, int], list[int]] = {}
        self._moved_settlements: dict[tuple[str, str, str, int], list[int]] = {}

    def transfer_moved(self, transfer_id: str, giver: str, receiver: str, amount_fen: int,
                       left: TransferState | None, entered: TransferState) -> None:
        """A transfer entered a state (from `left`, or new): one fewer in the old state, one more in the new."""
        shard = shard_of(transfer_id)
        self._add_transfer((giver, receiver, entered.value, shard), 1, amount_fen)
        if left is not None:
            self._add_transfer((giver, receiver, left.value, shard), -1, -amount_fen)

    def _add_transfer(self, key: tuple[str, str, str, int], count: int, amount_fen: int) -> None:
        moved = self._moved_transfers.setdefault(key, [0, 0])
        moved[0] += count
        moved[1] += amount_fen

    def committed_into(self, window_id: str, transfer_id: str, giver: str, receiver: str, amount_fen: int) -> None:
        """A committed transfer was assigned its settlement window (D16): one more in the window's figures."""
        moved = self._moved_settlements.setdefault((window_id, giver, receiver, shard_of(transfer_id)), [0, 0])
        moved[0] += 1
        moved[1] += amount_fen

    def outbox_moved(self, destination: str, message_id: str, pending: int = 0, attempts: int = 0,
                     done: int = 0) -> None:
        moved = self._moved_outbox.setdefault((destination, shard_of(message_id)), [0, 0, 0])
        moved[0] += pending
        moved[1] += attempts
        moved[2] += done

    def quota_moved(self, giver: str, receiver: str, binding_id: str, granted: int = 0, consumed: int = 0,
                    released: int = 0, consumptions: int = 0) -> None:
        """A quota's figures moved by these differences (Q3), and `consumptions` more were recorded on it."""
        moved = self._moved_quotas.setdefault((giver, receiver, shard_of(binding_id)), [0, 0, 0, 0])
        for index, value in enumerate((granted, consumed, released, consumptions)):
            moved[index] += value

    def clearing_moved(self, month: str, giver: str, receiver: str, subject_id: str, consumed: int = 0,
                       reversed_: int = 0, consumptions: int = 0, reversals: int = 0) -> None:
        """A consumption or a reversal recorded in a clearing month (Q10), counted for the pair's figures."""
        moved = self._moved_clearing.setdefault((month, giver, receiver, shard_of(subject_id)), [0, 0, 0, 0])
        for index, value in enumerate((consumed, reversed_, consumptions, reversals)):
            moved[index] += value

    def unflushed(self) -> bool:
        """Whether this transaction moved anything flush() has still to write."""
        return any((self._moved_transfers, self._moved_outbox, self._moved_quotas, self._moved_clearing,
                    self._moved_settlements))

    def flush(self) -> None:
        """Write what this transaction moved, rows in key order (called just before the commit)."""
        self._cursor.run_many(self._s.add_transfer, [
            {"giver_province": g, "receiver_province": r, "state": state, "shard": shard, "count": count,
             "amount_fen": amount}
            for (g, r, state, shard), (count, amount) in sorted(self._moved_transfers.items()) if count or amount])
        self._cursor.run_many(self._s.add_outbox, [
            {"destination": d, "shard": shard, "pending": pending, "attempts": attempts, "done": done}
            for (d, shard), (pending, attempts, done) in sorted(self._moved_outbox.items())
            if pending or attempts or done])
        self._cursor.run_many(self._s.add_quota, [
            {"giver_province": g, "receiver_province": r, "shard": shard, **dict(zip(QUOTA_SUMS, sums, strict=True))}
            for (g, r, shard), sums in sorted(self._moved_quotas.items()) if any(sums)])
        self._cursor.run_many(self._s.add_clearing, [
            {"clearing_window_id": month, "giver_province": g, "receiver_province": r, "shard": shard,
             **dict(zip(CLEARING_SUMS, sums, strict=True))}
            for (month, g, r, shard), sums in sorted(self._moved_clearing.items()) if any(sums)])
        self._cursor.run_many(self._s.add_settlement, [
            {"window_id": w, "giver_province": g, "receiver_province": r, "shard": shard, "count": count,
             "amount_fen": amount}
            for (w, g, r, shard), (count, amount) in sorted(self._moved_settlements.items())])
        self._moved_transfers.clear()
        self._moved_outbox.clear()
        self._moved_quotas.clear()
        self._moved_clearing.clear()
        self._moved_settlements.clear()

    def read(self) -> Totals:
        return Totals(self._pairs(self._cursor.all(self._s.transfers)), self._outbox(self._cursor.all(self._s.outbox)))

    def recount(self) -> Totals:
        return Totals(self._pairs(self._cursor.all(self._s.recount_transfers)),
                      self._outbox(self._cursor.all(self._s.recount_outbox)))

    def quota_pairs(self) -> list[QuotaPairTotals]:
        """Quota figures by ordered province pair: provinces x shards rows, never the quotas themselves."""
        return [QuotaPairTotals(g, r, QuotaBalance(int(granted), int(consumed), int(released)), int(count))
                for g, r, granted, consumed, released, count in self._cursor.all(self._s.quota_pairs)]

    def recount_quota_pairs(self) -> list[QuotaPairTotals]:
        """The same figures summed over every quota (without the consumption count): what they must equal."""
        return [QuotaPairTotals(g, r, QuotaBalance(int(granted), int(consumed), int(released)), 0)
                for g, r, granted, consumed, released in self._cursor.all(self._s.recount_quota_pairs)]

    def window_pairs(self, window_id: str) -> list[PairFigure]:
        """A window's committed figures by ordered pair, as kept (what its close freezes)."""
        return [PairFigure(g, r, int(total), int(count))
                for g, r, total, count in self._cursor.all(self._s.window_pairs, window_id=window_id)]

    def settlements(self, recount: bool = False) -> dict[tuple[str, str, str], tuple[int, int]]:
        """Every window's committed (count, fen) by (window, giver, receiver): as kept, or recounted from the rows."""
        rows = self._cursor.all(self._s.recount_settlements if recount else self._s.settlements)
        return {(w, g, r): (int(c), int(a or 0)) for w, g, r, c, a in rows}

    def oldest_undelivered(self) -> datetime | None:
        row = self._cursor.first(self._s.oldest_undelivered)
        return aware(row[0]) if row else None

    @staticmethod
    def _pairs(rows: list[tuple[Any, ...]]) -> list[PairStateFigure]:
        return [PairStateFigure(g, r, TransferState(s), int(c), int(a or 0)) for g, r, s, c, a in rows]

    @staticmethod
    def _outbox(rows: list[tuple[Any, ...]]) -> dict[str, OutboxFigures]:
        return {d: OutboxFigures(int(p or 0), int(a or 0), int(n or 0)) for d, p, a, n in rows}
