"""Settlement windows (D16-D18): their frozen figures, the provinces' statements, acknowledgements, payments."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, and_, bindparam, func, or_, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement

from gateway.domain.envelope import GATEWAY, Envelope
from gateway.domain.settlement import (
    CLEARING_PREFIX,
    Acknowledgement,
    ClearingLine,
    PairFigure,
    Payment,
    SettlementWindow,
    WindowSpan,
    WindowState,
    is_clearing_window,
)
from gateway.store.prepared import Cursor, Prepared
from gateway.store.tables import clearing_totals_t, pairs_t, statements_t, windows_t

if TYPE_CHECKING:  # statements.py imports this module's statements, and audit.py imports statements.py
    from gateway.store.repositories.audit import SqlAuditLog
    from gateway.store.repositories.totals import SqlTotals
    from gateway.store.statements import Statements


_PAIR_COLUMNS = (pairs_t.c.from_province, pairs_t.c.to_province, pairs_t.c.gross_fen, pairs_t.c.transfer_count,
                 pairs_t.c.reversed_fen, pairs_t.c.reversal_count, pairs_t.c.bank, pairs_t.c.serial_number,
                 pairs_t.c.paid_on)


def _in_sizes(count: int) -> int:
    """The number of ids an IN list is compiled for: a power of two from `count`, the rest filled with the last id,
    so a few compiled statements serve every page size."""
    return 1 << max(0, count - 1).bit_length()


def _window(row: Sequence[Any], pair_rows: Sequence[Sequence[Any]],
            ack_rows: Sequence[Sequence[Any]]) -> SettlementWindow:
    """A window from its row, its pairs' rows (`_PAIR_COLUMNS`) and its acknowledgements' (province, at)."""
    clearing = is_clearing_window(row[0])
    pairs, lines, payments = [], [], []
    for fr, to, gross, count, reversed_, reversals, bank, serial, paid_on in pair_rows:
        if clearing:
            lines.append(ClearingLine(fr, to, int(gross), int(reversed_), int(count), int(reversals)))
        else:
            pairs.append(PairFigure(fr, to, int(gross), int(count)))
        if paid_on is not None:
            payments.append(Payment(fr, to, bank, serial, paid_on))
    acks = tuple(Acknowledgement(province, at) for province, at in ack_rows)
    return SettlementWindow(row[0], WindowState(row[1]), row[2], row[3], row[4], tuple(pairs), acks,
                            tuple(payments), tuple(lines))


def _of_kind(query: Select[Any], clearing: bool | None) -> Select[Any]:
    """Clearing months only (True), the transfers' windows only (False), or both (None)."""
    if clearing is None:
        return query
    months = windows_t.c.window_id.like(CLEARING_PREFIX + "%")
    return query.where(months if clearing else ~months)


class SettlementStatements:
    """The settlement reads that operators and provinces repeat (the dashboard every 2 s), compiled once per
    engine; a close, an acknowledgement and a payment, a few times a day, compile theirs when they run."""

    def __init__(self, dialect: Dialect) -> None:
        def p(statement: Any) -> Prepared:
            return Prepared(statement, dialect)

        w, pr, st = windows_t.c, pairs_t.c, statements_t.c
        self._dialect = dialect
        self.window = p(select(w.window_id, w.state, w.opens_at, w.closes_at, w.closed_at)
                        .where(w.window_id == bindparam("window_id")))
        self.window_pairs = p(select(*_PAIR_COLUMNS)
                              .where(pr.window_id == bindparam("window_id"))
                              .order_by(pr.from_province, pr.to_province))
        self.window_acknowledgements = p(select(st.province, st.acknowledged_at)
                                         .where(and_(st.window_id == bindparam("window_id"),
                                                     st.acknowledged_at.is_not(None)))
                                         .order_by(st.province))
        # The transfers' windows and the clearing months ("Q2026-03", Q10) alike: each ends on its own calendar.
        self.due_for_close = p(select(w.window_id).where(and_(w.state == WindowState.OPEN.value,
                                                              w.closes_at <= bindparam("closes_before")))
                               .order_by(w.closes_at).limit(bindparam("limit")))
        self.statement = p(select(st.figures_payload, st.figures_key_id, st.figures_alg, st.figures_signature,
                                  st.figures_sha256)
                           .where(and_(st.window_id == bindparam("window_id"), st.province == bindparam("province"))))
        # The transfers' windows only: a clearing month ("Q...") is asked for by its id.
        self.latest_statement_window = p(select(st.window_id)
                                         .where(and_(st.province == bindparam("province"),
                                                     st.window_id.not_like(CLEARING_PREFIX + "%")))
                                         .order_by(st.window_id.desc()).limit(1))
        self.unacknowledged = p(select(func.count()).select_from(statements_t)
                                .where(and_(st.window_id == bindparam("window_id"), st.acknowledged_at.is_(None))))

    @functools.lru_cache(maxsize=32)  # noqa: B019 -- one per engine, kept for the engine's life
    def newest_first(self, clearing: bool | None, states: int, before: bool) -> Prepared:
        """Windows' rows newest first, of one kind (`_of_kind`), in one of `states` states (binds state_0…) when
        there are any, before a window id (bind `before`) when asked."""
        w = windows_t.c
        query = _of_kind(select(w.window_id, w.state, w.opens_at, w.closes_at, w.closed_at), clearing)
        if states:
            query = query.where(or_(*(w.state == bindparam(f"state_{n}") for n in range(states))))
        if before:
            query = query.where(w.window_id < bindparam("before"))
        return Prepared(query.order_by(w.window_id.desc()).limit(bindparam("limit")), self._dialect)

    @functools.lru_cache(maxsize=16)  # noqa: B019 -- one per engine and size, kept for the engine's life
    def pairs_of(self, count: int) -> Prepared:
        """The frozen pair figures of `count` windows (binds w_0…), by window then pair."""
        pr = pairs_t.c
        return Prepared(select(pr.window_id, *_PAIR_COLUMNS)
                        .where(pr.window_id.in_([bindparam(f"w_{n}") for n in range(count)]))
                        .order_by(pr.window_id, pr.from_province, pr.to_province), self._dialect)

    @functools.lru_cache(maxsize=16)  # noqa: B019 -- one per engine and size, kept for the engine's life
    def acknowledgements_of(self, count: int) -> Prepared:
        """The acknowledgements of `count` windows (binds w_0…), by window then province."""
        st = statements_t.c
        return Prepared(select(st.window_id, st.province, st.acknowledged_at)
                        .where(and_(st.window_id.in_([bindparam(f"w_{n}") for n in range(count)]),
                                    st.acknowledged_at.is_not(None)))
                        .order_by(st.window_id, st.province), self._dialect)

    @functools.lru_cache(maxsize=4)  # noqa: B019 -- one per engine, kept for the engine's life
    def counts_by_state(self, clearing: bool | None) -> Prepared:
        w = windows_t.c
        return Prepared(_of_kind(select(w.state, func.count()), clearing).group_by(w.state), self._dialect)


class SqlSettlementRepository:
    """Settlement windows, their frozen figures, the provinces' statements and acknowledgements."""

    def __init__(self, cursor: Cursor, statements: Statements, dialect: Dialect, audit: SqlAuditLog,
                 totals: SqlTotals) -> None:
        self._cursor, self._s, self._dialect, self._audit, self._totals = cursor, statements, dialect, audit, totals

    def _prepared(self, statement: ClauseElement) -> Prepared:
        # A close, an acknowledgement, a payment: a few times a day, compiled per call (SettlementStatements
        # holds the reads that repeat).
        return Prepared(statement, self._dialect)

    def _ensure(self, span: WindowSpan, at: datetime) -> None:
        self._cursor.run(self._s.ensure_window, window_id=span.window_id, opens_at=span.opens_at,
                         closes_at=span.closes_at, at=at)

    def state_for_commit(self, span: WindowSpan, at: datetime) -> WindowState:
        """The window's state, creating it OPEN if new, locked against closing until this transaction ends."""
        row = self._cursor.first(self._s.window_state_for_commit, w_id=span.window_id)
        if row is None:
            self._ensure(span, at)
            row = self._cursor.first(self._s.window_state_for_commit, w_id=span.window_id)
        assert row is not None
        return WindowState(row[0])

    def state_for_close(self, span: WindowSpan, at: datetime) -> WindowState:
        """The window's state, creating it OPEN if new, locked until this transaction ends."""
        self._ensure(span, at)
        state = self.lock(span.window_id)
        assert state is not None
        return state

    def lock(self, window_id: str) -> WindowState | None:
        """The window's state, locked against every other change until this transaction ends."""
        row = self._cursor.first(self._s.window_state_for_close, w_id=window_id)
        return None if row is None else WindowState(row[0])

    def committed_pairs(self, window_id: str) -> list[PairFigure]:
        """The window's figures as kept with each commit into it (gateway/store/repositories/totals.py): pairs x
        shards rows, however many transfers the window holds."""
        return self._totals.window_pairs(window_id)

    def clearing_lines(self, window_id: str) -> list[ClearingLine]:
        """A clearing month's figures per ordered pair (Q10), from its running totals: O(pairs x shards) rows,
        whatever the number of consumptions."""
        ct = clearing_totals_t.c
        statement = self._prepared(
            select(ct.giver_province, ct.receiver_province, func.sum(ct.consumed_fen), func.sum(ct.reversed_fen),
                   func.sum(ct.consumption_count), func.sum(ct.reversal_count))
            .where(ct.clearing_window_id == window_id)
            .group_by(ct.giver_province, ct.receiver_province).order_by(ct.giver_province, ct.receiver_province))
        lines = [ClearingLine(g, r, int(consumed), int(reversed_), int(consumptions), int(reversals))
                 for g, r, consumed, reversed_, consumptions, reversals in self._cursor.all(statement)]
        return [line for line in lines if line.consumption_count or line.reversal_count]

    def freeze(self, window_id: str, pairs: Sequence[PairFigure],
               statements: Sequence[tuple[str, Envelope, bytes]], at: datetime,
               lines: Sequence[ClearingLine] = ()) -> None:
        """Store the figures (a clearing month's lines as pairs: see SettlementPairRow) and each province's signed
        statement, and mark the window CLOSED."""
        rows = [(p.from_province, p.to_province, p.gross_fen, p.transfer_count, 0, 0) for p in pairs]
        rows += [(line.from_province, line.to_province, line.consumed_fen, line.consumption_count, line.reversed_fen,
                  line.reversal_count) for line in lines]
        self._cursor.run_many(self._prepared(pairs_t.insert()), [
            {"window_id": window_id, "from_province": fr, "to_province": to, "gross_fen": gross,
             "transfer_count": count, "reversed_fen": reversed_, "reversal_count": reversals, "bank": "",
             "serial_number": "", "paid_on": None, "paid_recorded_at": None}
            for fr, to, gross, count, reversed_, reversals in rows])
        self._cursor.run_many(self._prepared(statements_t.insert()), [
            {"window_id": window_id, "province": province, "figures_payload": envelope.payload,
             "figures_key_id": envelope.key_id, "figures_alg": envelope.alg, "figures_signature": envelope.signature,
             "figures_sha256": digest, "acknowledged_at": None, "ack_message_id": "", "ack_payload": None,
             "ack_key_id": "", "ack_signature": None} for province, envelope, digest in statements])
        figures = [f"{p.from_province}->{p.to_province}:{p.gross_fen}:{p.transfer_count}" for p in pairs]
        figures += [f"{line.from_province}->{line.to_province}:{line.consumed_fen}:{line.consumption_count}"
                    f":-{line.reversed_fen}:{line.reversal_count}" for line in lines]
        sent = [f"{province}:{digest.hex()}" for province, _, digest in statements]
        changed = self.change_state(window_id, WindowState.OPEN, WindowState.CLOSED, at, closed=True,
                                    detail=" ".join(figures + sent))
        assert changed, "the window was locked OPEN by this transaction"

    def change_state(self, window_id: str, from_state: WindowState, to: WindowState, at: datetime,
                     closed: bool = False, detail: str = "") -> bool:
        w = windows_t.c
        values: dict[str, Any] = {"state": to.value, "updated_at": at}
        if closed:
            values["closed_at"] = at
        statement = self._prepared(update(windows_t).where(and_(w.window_id == window_id,
                                                                w.state == from_state.value)).values(**values))
        if self._cursor.run(statement) != 1:
            return False
        self._audit.record("settlement", window_id, to.value, at, detail)
        return True

    def get(self, window_id: str) -> SettlementWindow | None:
        row = self._cursor.first(self._s.settlements.window, window_id=window_id)
        if row is None:
            return None
        return _window(row, self._cursor.all(self._s.settlements.window_pairs, window_id=window_id),
                       self._cursor.all(self._s.settlements.window_acknowledgements, window_id=window_id))

    def newest_first(self, states: Sequence[WindowState], before: str | None, limit: int,
                     clearing: bool | None = None) -> list[SettlementWindow]:
        """Windows newest first (by window id: clearing months, "Q...", sort after every transfers' window),
        `before` excluded; `clearing`: only clearing months (True), only the transfers' windows (False)."""
        states = tuple(dict.fromkeys(states))
        values: dict[str, Any] = {f"state_{n}": state.value for n, state in enumerate(states)}
        if before is not None:
            values["before"] = before
        statement = self._s.settlements.newest_first(clearing, len(states), before is not None)
        rows = self._cursor.all(statement, limit=limit, **values)
        if not rows:
            return []
        # Three statements for the page, whatever its size (the dashboard reads two pages every 2 s).
        ids = [row[0] for row in rows]
        size = _in_sizes(len(ids))
        given = {f"w_{n}": ids[min(n, len(ids) - 1)] for n in range(size)}
        pairs: dict[str, list[tuple[Any, ...]]] = {window_id: [] for window_id in ids}
        for pair in self._cursor.all(self._s.settlements.pairs_of(size), **given):
            pairs[pair[0]].append(pair[1:])
        acks: dict[str, list[tuple[Any, ...]]] = {window_id: [] for window_id in ids}
        for ack in self._cursor.all(self._s.settlements.acknowledgements_of(size), **given):
            acks[ack[0]].append(ack[1:])
        return [_window(row, pairs[row[0]], acks[row[0]]) for row in rows]

    def due_for_close(self, closes_before: datetime, limit: int) -> list[str]:
        rows = self._cursor.all(self._s.settlements.due_for_close, closes_before=closes_before, limit=limit)
        return [row[0] for row in rows]

    def statement(self, window_id: str, province: str, payload_type: str) -> tuple[Envelope, bytes] | None:
        """The gateway-signed figures sent to `province` (of the type the caller stored them as), with their digest."""
        row = self._cursor.first(self._s.settlements.statement, window_id=window_id, province=province)
        if row is None:
            return None
        payload, key_id, alg, signature, digest = row
        return Envelope(bytes(payload), payload_type, GATEWAY, key_id, alg, bytes(signature)), bytes(digest)

    def latest_statement_window(self, province: str) -> str | None:
        row = self._cursor.first(self._s.settlements.latest_statement_window, province=province)
        return None if row is None else str(row[0])

    def acknowledge(self, window_id: str, province: str, at: datetime, message_id: str, envelope: Envelope) -> bool:
        """Record the province's signed agreement once; False if it had already agreed."""
        st = statements_t.c
        statement = self._prepared(update(statements_t).where(and_(
            st.window_id == window_id, st.province == province, st.acknowledged_at.is_(None))).values(
            acknowledged_at=at, ack_message_id=message_id, ack_payload=envelope.payload, ack_key_id=envelope.key_id,
            ack_signature=envelope.signature))
        if self._cursor.run(statement) != 1:
            return False
        self._audit.record("settlement", window_id, "AGREED", at,
                           f"{province} message_id={message_id} signature={envelope.signature.hex()}")
        return True

    def unacknowledged(self, window_id: str) -> int:
        row = self._cursor.first(self._s.settlements.unacknowledged, window_id=window_id)
        return int(row[0]) if row else 0

    def record_payment(self, window_id: str, payment: Payment, at: datetime) -> None:
        pr = pairs_t.c
        self._cursor.run(self._prepared(update(pairs_t).where(and_(
            pr.window_id == window_id, pr.from_province == payment.from_province,
            pr.to_province == payment.to_province, pr.paid_on.is_(None))).values(
            bank=payment.bank, serial_number=payment.serial_number, paid_on=payment.paid_on, paid_recorded_at=at)))
        self._audit.record("settlement", window_id, "PAID", at,
                           f"{payment.from_province}->{payment.to_province} bank={payment.bank} "
                           f"serial={payment.serial_number} date={payment.paid_on.isoformat()}")

    def counts_by_state(self, clearing: bool | None = None) -> dict[WindowState, int]:
        rows = self._cursor.all(self._s.settlements.counts_by_state(clearing))
        return {WindowState(state): int(count) for state, count in rows}
