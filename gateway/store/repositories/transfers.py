"""Transfers, their state changes and events, their givers' days, and the operators' reads of them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.engine import Dialect

from gateway.domain.envelope import Envelope
from gateway.domain.monitoring import Stats, TransferChange, TransferFilter
from gateway.domain.transfers import Transfer, TransferEvent, TransferState
from gateway.store.prepared import Cursor, Prepared
from gateway.store.repositories.audit import SqlAuditLog
from gateway.store.repositories.totals import SqlTotals
from gateway.store.sealing import Sealer
from gateway.store.statements import TRANSFER_VIEW, Statements
from gateway.store.tables import REASON_MAX, transfers_t


def _instruction_place(transfer_id: str) -> bytes:
    return b"transfers.instruction_payload:" + transfer_id.encode()


class SqlTransferRepository:
    def __init__(self, cursor: Cursor, statements: Statements, dialect: Dialect, sealer: Sealer,
                 audit: SqlAuditLog, totals: SqlTotals) -> None:
        self._cursor, self._s, self._dialect, self._sealer, self._audit = cursor, statements, dialect, sealer, audit
        self._totals = totals

    def page(self, where: TransferFilter, after: tuple[datetime, str] | None, limit: int,
             newest_first: bool = False) -> list[Transfer]:
        """Transfers in (created_at, transfer_id) order, or its reverse, from just past `after`.

        Oldest first, new ones only ever come later; newest first, they come before the first page. Either
        way a page is one range of ix_transfers_created_at_transfer_id, read in its order: no sort.
        """
        t = transfers_t.c
        query = select(*TRANSFER_VIEW)
        if where.states:
            query = query.where(or_(*(t.state == state.value for state in where.states)))
        if where.giver_province:
            query = query.where(t.giver_province == where.giver_province)
        if where.receiver_province:
            query = query.where(t.receiver_province == where.receiver_province)
        if where.created_from is not None:
            query = query.where(t.created_at >= where.created_from)
        if where.created_to is not None:
            query = query.where(t.created_at < where.created_to)
        if after is not None:
            # The range starts at the position's time (an index seek), the id breaking the tie within it.
            at, transfer_id = after
            if newest_first:
                query = query.where(t.created_at <= at, or_(t.created_at < at, t.transfer_id < transfer_id))
            else:
                query = query.where(t.created_at >= at, or_(t.created_at > at, t.transfer_id > transfer_id))
        order = (t.created_at.desc(), t.transfer_id.desc()) if newest_first else (t.created_at, t.transfer_id)
        # Operator queries vary in shape and are rare: compiled per call, run like every other statement.
        statement = Prepared(query.order_by(*order).limit(limit), self._dialect)
        return [self._transfer(dict(zip(statement.columns, raw, strict=True))) for raw in self._cursor.all(statement)]

    def changes_after(self, position: int, limit: int) -> list[TransferChange]:
        return self._changes(self._cursor.all(self._s.changes_after, after=position, limit=limit))

    def newest_changes(self, limit: int) -> list[TransferChange]:
        """The last `limit` changes written, newest first: one range of the events' key, read backwards."""
        return self._changes(self._cursor.all(self._s.newest_changes, limit=limit))

    @staticmethod
    def _changes(rows: list[tuple[Any, ...]]) -> list[TransferChange]:
        return [TransferChange(int(i), tid, TransferState(state), at, reason, giver, receiver, int(amount))
                for i, tid, state, at, reason, giver, receiver, amount in rows]

    def last_change(self) -> int:
        row = self._cursor.first(self._s.last_change)
        return int(row[0]) if row and row[0] is not None else 0

    def writers_horizon(self) -> datetime | None:
        """A mark of now: writing transactions begun by then can be waited for (None on SQLite, where a
        gap is always a rollback)."""
        row = self._cursor.first(self._s.database_now) if self._s.database_now is not None else None
        return row[0] if row else None

    def writers_ended(self, horizon: datetime | None) -> bool:
        """True once every writing transaction of this database begun by `horizon` has ended."""
        if self._s.writers_begun_by is None or horizon is None:
            return True
        row = self._cursor.first(self._s.writers_begun_by, since=horizon)
        return row is not None and int(row[0]) == 0

    def stats(self) -> Stats:
        """From the running totals and one index seek: the same at a million transfers as at ten."""
        totals = self._totals.read()
        return Stats(
            transfers=totals.transfers,
            outbox_backlog=sum(figures.pending for figures in totals.outbox.values()),
            oldest_undelivered=self._totals.oldest_undelivered(),
            failed_attempts_by_province={d: figures.failed_attempts for d, figures in totals.outbox.items()})

    def add(self, transfer: Transfer, giver_ref: bytes, receiver_ref: bytes, envelope: Envelope) -> bool:
        """Store a new transfer; False (and nothing stored) if its id is taken, e.g. by another province's."""
        inserted = self._cursor.first(
            self._s.insert_transfer,
            transfer_id=transfer.transfer_id, state=transfer.state.value, reason=transfer.reason[:REASON_MAX],
            giver_province=transfer.giver_province, receiver_province=transfer.receiver_province,
            giver_ref=giver_ref, receiver_ref=receiver_ref, giver_id_masked=transfer.giver_id_masked,
            receiver_id_masked=transfer.receiver_id_masked, amount_fen=transfer.amount_fen,
            currency=transfer.currency, binding_id=transfer.binding_id, created_at=transfer.created_at,
            updated_at=transfer.updated_at, return_deadline=transfer.return_deadline,
            delivery_deadline=transfer.delivery_deadline, instruction_sha256=transfer.instruction_sha256,
            instruction_payload=self._sealer.seal(envelope.payload, _instruction_place(transfer.transfer_id)),
            instruction_signer=envelope.signer,
            instruction_key_id=envelope.key_id, instruction_alg=envelope.alg,
            instruction_signature=envelope.signature, settlement_window_id=transfer.settlement_window_id)
        if inserted is None:
            return False
        self._totals.transfer_moved(transfer.transfer_id, transfer.giver_province, transfer.receiver_province,
                                    transfer.amount_fen, None, transfer.state)
        self.add_event(transfer.transfer_id, transfer.state, transfer.reason, transfer.created_at)
        self._audit.record("transfer", transfer.transfer_id, transfer.state.value, transfer.created_at,
                           f"{transfer.giver_province}->{transfer.receiver_province} amount_fen={transfer.amount_fen} "
                           f"binding={transfer.binding_id} instruction_sha256={transfer.instruction_sha256.hex()}")
        return True

    @staticmethod
    def _transfer(v: dict[str, Any], history: tuple[TransferEvent, ...] = ()) -> Transfer:
        return Transfer(
            transfer_id=v["transfer_id"], state=TransferState(v["state"]), giver_province=v["giver_province"],
            receiver_province=v["receiver_province"], giver_id_masked=v["giver_id_masked"],
            receiver_id_masked=v["receiver_id_masked"], amount_fen=v["amount_fen"], currency=v["currency"],
            created_at=v["created_at"], updated_at=v["updated_at"], return_deadline=v["return_deadline"],
            delivery_deadline=v["delivery_deadline"], instruction_sha256=bytes(v["instruction_sha256"]),
            reason=v["reason"], binding_id=v["binding_id"], settlement_window_id=v["settlement_window_id"],
            history=history)

    def suspended_party(self, transfer_id: str) -> str | None:
        row = self._cursor.first(self._s.transfer_suspended_parties, w_id=transfer_id)
        if row is None:
            return None
        return "giver" if row[0] else "receiver" if row[1] else None

    def get(self, transfer_id: str, with_history: bool = False) -> Transfer | None:
        raw = self._cursor.first(self._s.get_transfer, w_id=transfer_id)
        if raw is None:
            return None
        history: tuple[TransferEvent, ...] = ()
        if with_history:
            history = tuple(TransferEvent(TransferState(state), at, reason)
                            for state, at, reason in self._cursor.all(self._s.history, w_id=transfer_id))
        return self._transfer(dict(zip(self._s.get_transfer.columns, raw, strict=True)), history)

    def giver_ref(self, transfer_id: str) -> bytes | None:
        row = self._cursor.first(self._s.transfer_giver_ref, w_id=transfer_id)
        return None if row is None else bytes(row[0])

    def exists(self, transfer_id: str) -> bool:
        return self._cursor.first(self._s.transfer_exists, w_id=transfer_id) is not None

    def instruction_envelope(self, transfer_id: str, payload_type: str) -> Envelope | None:
        """The giver province's signed instruction as it came, of the type the caller stored it as."""
        raw = self._cursor.first(self._s.instruction, w_id=transfer_id)
        if raw is None:
            return None
        v = dict(zip(self._s.instruction.columns, raw, strict=True))
        payload = self._sealer.open(bytes(v["instruction_payload"]), _instruction_place(transfer_id))
        return Envelope(payload, payload_type, v["instruction_signer"], v["instruction_key_id"],
                        v["instruction_alg"], bytes(v["instruction_signature"]))

    def change_state(self, transfer_id: str, from_states: Sequence[TransferState], to: TransferState,
                     reason: str, at: datetime) -> bool:
        """Move the transfer only from one of `from_states`: the guard makes each change happen once."""
        reason = reason[:REASON_MAX]
        for state in from_states:
            moved = self._cursor.first(self._s.change_state, w_id=transfer_id, w_from=state.value, state=to.value,
                                       reason=reason, updated_at=at)
            if moved is not None:
                giver, receiver, amount = moved
                self._totals.transfer_moved(transfer_id, giver, receiver, int(amount), state, to)
                self.add_event(transfer_id, to, reason, at)
                self._audit.record("transfer", transfer_id, to.value, at, reason)
                return True
        return False

    def add_event(self, transfer_id: str, state: TransferState, reason: str, at: datetime) -> None:
        """A state change for the watch and the history, written with the commit (nothing here reads it back)."""
        self._cursor.later(self._s.insert_event, transfer_id=transfer_id, state=state.value,
                           reason=reason[:REASON_MAX], at=at)

    def due_for_return(self, now: datetime, limit: int) -> list[str]:
        return [row[0] for row in self._cursor.all(self._s.due_for_return, now=now, limit=limit)]

    def assign_window(self, transfer_id: str, window_id: str) -> None:
        """The committed transfer's settlement window, counted in the window's figures (its close reads them)."""
        row = self._cursor.first(self._s.assign_window, w_id=transfer_id, window_id=window_id)
        if row is not None:
            giver, receiver, amount = row
            self._totals.committed_into(window_id, transfer_id, giver, receiver, int(amount))

    def reserve_daily_slot(self, giver_ref: bytes, day: date) -> int:
        """Count one more transfer of the giver on `day`; returns how many there were before it."""
        row = self._cursor.first(self._s.reserve_daily_slot, ref=giver_ref, day=day)
        assert row is not None
        return int(row[0]) - 1

    def release_daily_slot(self, giver_ref: bytes, day: date) -> None:
        """Count one transfer fewer of the giver on `day`."""
        self._cursor.run(self._s.release_daily_slot, ref=giver_ref, day=day)

    def undelivered_past_deadline(self, now: datetime, limit: int) -> list[str]:
        return [row[0] for row in self._cursor.all(self._s.undelivered, now=now, limit=limit)]
