"""Records the gateway keeps about messages: idempotency records and outbox messages."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class RequestOutcome(enum.Enum):
    PENDING = "PENDING"  # claimed in the current transaction, never visible committed
    OK = "OK"
    REJECTED = "REJECTED"


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """The idempotency record of one (sender, message_id) and the answer the gateway gave (D15)."""

    sender: str
    message_id: str
    payload_type: str
    payload_sha256: bytes
    outcome: RequestOutcome
    response: bytes | None = None
    error_kind: str | None = None
    error_reason: str | None = None
    error_field: str | None = None
    error_message: str | None = None


class OutboxKind(enum.Enum):
    DELIVER_TRANSFER = "DELIVER_TRANSFER"
    NOTIFY_TRANSFER_OUTCOME = "NOTIFY_TRANSFER_OUTCOME"
    REQUEST_CONSENT = "REQUEST_CONSENT"
    NOTIFY_BINDING_OUTCOME = "NOTIFY_BINDING_OUTCOME"
    NOTIFY_SETTLEMENT = "NOTIFY_SETTLEMENT"


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: int
    destination: str
    kind: OutboxKind
    message_id: str
    subject_id: str
    attempts: int
    created_at: datetime
