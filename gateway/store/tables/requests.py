"""The idempotency record of every request (D15)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.tables.base import Base, UtcDateTime


class RequestRow(Base):
    """One row per (sender, message_id) ever accepted for processing: the idempotency record (D15)."""

    __tablename__ = "requests"

    sender: Mapped[str] = mapped_column(String(16), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    payload_type: Mapped[str] = mapped_column(String(128))
    payload_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    # OK: `response` holds the signed receipt; REJECTED: the error_* columns hold the stored refusal.
    outcome: Mapped[str] = mapped_column(String(16))
    response: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    error_kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_field: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
