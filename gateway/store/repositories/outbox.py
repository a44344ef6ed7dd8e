"""The outbox: messages owed to provinces, leased to whoever sends them, until acknowledged or expired."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway.domain.bindings import BindingState
from gateway.domain.outbox import (
    DeliverTransfer,
    NotifyBindingOutcome,
    NotifyConsumption,
    NotifyQuota,
    NotifySettlement,
    NotifyTransferOutcome,
    OutboxContent,
    OutboxKind,
    OutboxMessage,
    OutboxRecord,
    OutboxStatus,
    RequestConsent,
)
from gateway.domain.transfers import TransferState
from gateway.store.prepared import Cursor
from gateway.store.repositories.totals import SqlTotals
from gateway.store.statements import Statements
from gateway.store.tables import REASON_MAX


def _columns(content: OutboxContent) -> dict[str, str]:
    """The outbox row's kind, state and reason for a message."""
    match content:
        case NotifyTransferOutcome(state=state, reason=reason) | NotifyBindingOutcome(state=state, reason=reason):
            return {"kind": content.kind.value, "state": state.value, "reason": reason[:REASON_MAX]}
        case NotifyQuota(version=version) | NotifyConsumption(version=version):
            # The quota's version the notice tells (its quota_changes row), where outcomes keep their state.
            return {"kind": content.kind.value, "state": str(version), "reason": ""}
        case _:
            return {"kind": content.kind.value, "state": "", "reason": ""}


def _content(kind: str, state: str, reason: str) -> OutboxContent:
    """The message an outbox row's kind, state and reason hold."""
    match OutboxKind(kind):
        case OutboxKind.DELIVER_TRANSFER:
            return DeliverTransfer()
        case OutboxKind.NOTIFY_TRANSFER_OUTCOME:
            return NotifyTransferOutcome(TransferState(state), reason)
        case OutboxKind.REQUEST_CONSENT:
            return RequestConsent()
        case OutboxKind.NOTIFY_BINDING_OUTCOME:
            return NotifyBindingOutcome(BindingState(state), reason)
        case OutboxKind.NOTIFY_SETTLEMENT:
            return NotifySettlement()
        case OutboxKind.NOTIFY_QUOTA:
            return NotifyQuota(int(state))
        case OutboxKind.NOTIFY_CONSUMPTION:
            return NotifyConsumption(int(state))


class SqlOutboxRepository:
    def __init__(self, cursor: Cursor, statements: Statements, totals: SqlTotals) -> None:
        self._cursor, self._s, self._totals = cursor, statements, totals
        # Whether this transaction made a message due now that no loop was handed (written unleased, or its lease
        # given back): only a claim finds it, so the unit of work says so once it commits.
        self.claimable = False

    def enqueue(self, destination: str, content: OutboxContent, message_id: str, subject_id: str, at: datetime,
                lease_until: datetime | None = None) -> OutboxMessage | None:
        # The unique (destination, message_id) key makes a second enqueue of the same message a no-op.
        columns = _columns(content)
        if lease_until is None:
            if self._cursor.first(self._s.enqueue, destination=destination, message_id=message_id,
                                  subject_id=subject_id, at=at, **columns) is not None:
                self._totals.outbox_moved(destination, message_id, pending=1)
                self.claimable = True
            return None
        row = self._cursor.first(self._s.enqueue_leased, destination=destination, message_id=message_id,
                                 subject_id=subject_id, at=at, lease_until=lease_until, **columns)
        if row is None:
            return None
        self._totals.outbox_moved(destination, message_id, pending=1, attempts=1)  # written as a claim leaves it
        return OutboxMessage(row[0], destination, _content(**columns), message_id, subject_id, 1, at)

    def release(self, message_ids: Sequence[int], now: datetime) -> None:
        for id in message_ids:
            if (row := self._cursor.first(self._s.release_lease, w_id=id, now=now)) is not None:
                self._totals.outbox_moved(row[0], row[1], attempts=-1)  # the attempt was never made
                self.claimable = True

    def claim_due(self, now: datetime, limit: int, lease_until: datetime,
                  skip_destinations: Sequence[str] = ()) -> list[OutboxMessage]:
        """Take due messages (none for `skip_destinations`) and lease them, so a crash mid-send only delays their
        retry."""
        rows = self._cursor.all(self._s.claim_due_except(tuple(sorted(skip_destinations))), now=now, limit=limit)
        self._cursor.run_many(self._s.lease, [{"w_id": row[0], "lease_until": lease_until} for row in rows])
        for row in rows:
            self._totals.outbox_moved(row[1], row[5], attempts=1)
        return [OutboxMessage(id, destination, _content(kind, state, reason), message_id, subject_id, attempts + 1,
                              created_at)
                for id, destination, kind, state, reason, message_id, subject_id, attempts, created_at in rows]

    def mark_done(self, message_id: int, at: datetime) -> None:
        if (row := self._cursor.first(self._s.mark_done, w_id=message_id, at=at)) is not None:
            self._totals.outbox_moved(row[0], row[1], pending=-1, done=1)

    def mark_retry(self, message_id: int, next_attempt_at: datetime, error: str) -> None:
        self._cursor.run(self._s.mark_retry, w_id=message_id, next_attempt_at=next_attempt_at, error=error[:128])

    def expire_pending(self, kind: OutboxKind, subject_id: str, at: datetime, error: str) -> None:
        for destination, message_id in self._cursor.all(self._s.expire_pending, w_kind=kind.value,
                                                        w_subject=subject_id, at=at, error=error[:128]):
            self._totals.outbox_moved(destination, message_id, pending=-1)

    def of_subject(self, subject_id: str, kinds: Sequence[OutboxKind], newest: int) -> list[OutboxRecord]:
        """The newest `newest` messages of these kinds about one transfer, binding or window, oldest first,
        whatever their status: one index range per kind."""
        rows = sorted((row for kind in dict.fromkeys(kinds)
                       for row in self._cursor.all(self._s.outbox_of_subject, subject=subject_id, kind=kind.value,
                                                   limit=newest)), key=lambda row: row[0])[-newest:]
        return [OutboxRecord(destination, _content(kind, state, reason), message_id, OutboxStatus(status), attempts,
                             last_error, next_attempt_at, created_at, done_at)
                for _, destination, kind, state, reason, message_id, status, attempts, last_error, next_attempt_at,
                created_at, done_at in rows]
