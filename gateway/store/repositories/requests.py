"""Idempotency records: one per (sender, message_id), with the answer the gateway gave (D15)."""

from __future__ import annotations

from datetime import datetime

from gateway.domain.records import RequestOutcome, StoredRequest
from gateway.store.prepared import Cursor
from gateway.store.statements import Statements
from gateway.store.tables import REASON_MAX


class SqlRequestRepository:
    def __init__(self, cursor: Cursor, statements: Statements) -> None:
        self._cursor, self._s = cursor, statements

    def get(self, sender: str, message_id: str) -> StoredRequest | None:
        raw = self._cursor.first(self._s.get_request, w_sender=sender, w_id=message_id)
        if raw is None:
            return None
        v = dict(zip(self._s.get_request.columns, raw, strict=True))
        return StoredRequest(
            sender=v["sender"], message_id=v["message_id"], payload_type=v["payload_type"],
            payload_sha256=bytes(v["payload_sha256"]), outcome=RequestOutcome(v["outcome"]),
            response=bytes(v["response"]) if v["response"] is not None else None, error_kind=v["error_kind"],
            error_reason=v["error_reason"], error_field=v["error_field"], error_message=v["error_message"])

    def claim(self, sender: str, message_id: str, payload_type: str, payload_sha256: bytes,
              at: datetime) -> bool:
        """Insert the idempotency record; False if (sender, message_id) is taken (the unique key decides)."""
        # RETURNING, not rowcount: psycopg reports no row count for INSERT .. ON CONFLICT DO NOTHING.
        return self._cursor.first(
            self._s.claim_request, sender=sender, message_id=message_id, payload_type=payload_type,
            payload_sha256=payload_sha256, outcome=RequestOutcome.PENDING.value, response=None, error_kind=None,
            error_reason=None, error_field=None, error_message=None, created_at=at) is not None

    def record_response(self, sender: str, message_id: str, response: bytes) -> None:
        """The answer to the claimed request, written with the commit."""
        self._cursor.later(self._s.record_response, w_sender=sender, w_id=message_id,
                           outcome=RequestOutcome.OK.value, response=response)

    def record_rejection(self, sender: str, message_id: str, kind: str, reason: str, field: str | None,
                         message: str) -> None:
        """The stored refusal of the claimed request, written with the commit."""
        self._cursor.later(self._s.record_rejection, w_sender=sender, w_id=message_id,
                           outcome=RequestOutcome.REJECTED.value, error_kind=kind, error_reason=reason[:REASON_MAX],
                           error_field=field, error_message=message)
