"""The tamper-evident audit log: entries gathered in a unit of work, chained onto the head at its commit."""

from __future__ import annotations

from datetime import datetime

from gateway.domain.audit import GENESIS, AuditEntry, AuditEvent, Checkpoint, canonical_tail, chain
from gateway.store.prepared import Cursor
from gateway.store.statements import Statements


class SqlAuditLog:
    """The tamper-evident record: events gathered during the unit of work, chained and written at commit."""

    def __init__(self, cursor: Cursor, statements: Statements) -> None:
        self._cursor, self._s = cursor, statements
        self._pending: list[AuditEvent] = []
        self._actor = ""

    def act_as(self, actor: str) -> None:
        self._actor = actor

    def record(self, kind: str, subject_id: str, action: str, at: datetime, detail: str = "") -> None:
        if self._actor:
            detail = f"{detail} by={self._actor}" if detail else f"by={self._actor}"
        self._pending.append(AuditEvent(kind, subject_id, action, at, detail))

    def unflushed(self) -> bool:
        """Whether flush() has entries to write."""
        return bool(self._pending)

    def flush(self) -> None:
        """Chain what this transaction did onto the head (locked until commit) and write it.

        On PostgreSQL the database chains each entry (statements.py, DatabaseChaining): the unit of work sends
        them with its COMMIT in one batch, so the head, which every audited commit queues on, is held only while
        the database runs the batch's end, never while an answer travels to the gateway and back. SQLite, one
        writer in this process, is given the entries chained here."""
        if not self._pending:
            return
        in_database = self._s.chain_audit_in_database
        if in_database is not None:
            for pending in self._pending:
                self._cursor.run(in_database.move_head, tail=canonical_tail(pending))
                self._cursor.run(in_database.write_entry, at=pending.at, kind=pending.kind,
                                 subject_id=pending.subject_id, action=pending.action, detail=pending.detail)
            self._pending.clear()
            return
        row = self._cursor.first(self._s.audit_head_for_append)
        assert row is not None, "the schema makes the head row (migration 0002)"
        size, head = int(row[0]), bytes(row[1])
        rows = []
        for pending in self._pending:
            size += 1
            entry = chain(head, size, pending)
            head = entry.entry_hash
            rows.append({"seq": entry.seq, "at": entry.at, "kind": entry.kind, "subject_id": entry.subject_id,
                         "action": entry.action, "detail": entry.detail, "prev_hash": entry.prev_hash,
                         "entry_hash": entry.entry_hash})
        self._cursor.run_many(self._s.insert_audit, rows)
        self._cursor.run(self._s.move_audit_head, size=size, head_hash=head)
        self._pending.clear()

    def head(self) -> tuple[int, bytes]:
        row = self._cursor.first(self._s.audit_head)
        return (0, GENESIS) if row is None else (int(row[0]), bytes(row[1]))

    def entries_after(self, seq: int, limit: int) -> list[AuditEntry]:
        return [AuditEntry(int(n), kind, subject, action, at, detail, bytes(prev), bytes(entry))
                for n, kind, subject, action, at, detail, prev, entry in
                self._cursor.all(self._s.audit_entries, after=seq, limit=limit)]

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._cursor.run(self._s.insert_checkpoint, size=checkpoint.size, head_hash=checkpoint.head, at=checkpoint.at,
                         payload=checkpoint.payload, key_id=checkpoint.key_id, signature=checkpoint.signature)

    def checkpoints(self) -> list[Checkpoint]:
        return [Checkpoint(int(size), bytes(head), at, bytes(payload), key_id, bytes(signature))
                for size, head, at, payload, key_id, signature in self._cursor.all(self._s.checkpoints)]

    def last_checkpoint_size(self) -> int:
        row = self._cursor.first(self._s.last_checkpoint)
        return int(row[0]) if row and row[0] is not None else 0
