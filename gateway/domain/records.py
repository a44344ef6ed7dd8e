"""Idempotency records: what the gateway answered each (sender, message_id) (D15)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
