"""A new transfer's facts (SubmissionReads): four reads sent together, one round trip and its sync on PostgreSQL."""

from __future__ import annotations

from datetime import date

from gateway.store.prepared import Cursor
from gateway.store.repositories.bindings import SqlBindingRepository
from gateway.store.repositories.members import parties_suspended, party_named
from gateway.store.statements import Statements
from gateway.usecases.ports import SubmissionFacts


class SqlSubmissionReads:
    def __init__(self, cursor: Cursor, statements: Statements, bindings: SqlBindingRepository) -> None:
        self._cursor, self._s, self._bindings = cursor, statements, bindings

    def read(self, transfer_id: str, giver_ref: bytes, giver_province: str, receiver_ref: bytes,
             receiver_province: str, day: date, binding_id: str) -> SubmissionFacts:
        s = self._s
        self._bindings.write_queued()
        taken, counted, binding, suspended = self._cursor.together(
            (s.transfer_exists, {"w_id": transfer_id}),
            (s.reserve_daily_slot, {"ref": giver_ref, "day": day}),
            (s.lock_binding, {"w_id": binding_id}),
            parties_suspended(s, giver_ref, giver_province, receiver_ref, receiver_province))
        assert counted is not None, "an upsert's RETURNING has its row"
        return SubmissionFacts(transfer_id_taken=taken is not None, earlier_today=int(counted[0]) - 1,
                               binding=None if binding is None else self._bindings.from_row(binding),
                               suspended_party=party_named(suspended))
