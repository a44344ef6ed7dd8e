"""The outbox: messages owed to provinces."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.tables.base import Base, UtcDateTime


class OutboxRow(Base):
    """A message the gateway owes a province; sent until acknowledged (api.md, outbox)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    destination: Mapped[str] = mapped_column(String(6))
    kind: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[str] = mapped_column(String(128))
    subject_id: Mapped[str] = mapped_column(String(64))
    # What an outcome notification tells (domain/outbox.py): the state and its reason; "" for other kinds.
    state: Mapped[str] = mapped_column(String(16), default="", server_default="")
    reason: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # PENDING until acknowledged (DONE) or abandoned past its deadline (EXPIRED).
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_error: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("destination", "message_id", name="uq_outbox_destination_message"),
        Index("ix_outbox_status_next_attempt", "status", "next_attempt_at"),
        # The oldest message not yet delivered, read by operators without scanning the backlog.
        Index("ix_outbox_status_created_at", "status", "created_at"),
        # The messages of one kind about one transfer, binding or window, newest first (operators' inspections,
        # expiring a delivery): a range however long the subject's history.
        Index("ix_outbox_subject_kind_id", "subject_id", "kind", "id"),
    )
