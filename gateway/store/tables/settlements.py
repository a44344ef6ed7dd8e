"""Settlement windows, their frozen figures, statements and payments (D16-D18)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.tables.base import Base, UtcDateTime


class SettlementWindowRow(Base):
    """A settlement window (D16-D18); its row is locked by commits (shared) and by closing (exclusive)."""

    __tablename__ = "settlement_windows"

    window_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    opens_at: Mapped[datetime] = mapped_column(UtcDateTime)
    closes_at: Mapped[datetime] = mapped_column(UtcDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SettlementPairRow(Base):
    """A closed window's frozen gross figure for one ordered province pair, and its payment (D17, D18).

    A clearing month's line (Q10) is one too: gross_fen its consumptions, transfer_count their number, with its
    reversals beside them (0 for a transfers' window).
    """

    __tablename__ = "settlement_pairs"

    window_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    from_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    to_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    gross_fen: Mapped[int] = mapped_column(BigInteger)
    transfer_count: Mapped[int] = mapped_column(BigInteger)
    reversed_fen: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    reversal_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    bank: Mapped[str] = mapped_column(String(64), default="")
    serial_number: Mapped[str] = mapped_column(String(64), default="")
    paid_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    paid_recorded_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class SettlementStatementRow(Base):
    """What one province was sent of a closed window (gateway-signed) and its signed acknowledgement."""

    __tablename__ = "settlement_statements"

    window_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    province: Mapped[str] = mapped_column(String(6), primary_key=True)
    figures_payload: Mapped[bytes] = mapped_column(LargeBinary)
    figures_key_id: Mapped[str] = mapped_column(String(64))
    figures_alg: Mapped[str] = mapped_column(String(16))
    figures_signature: Mapped[bytes] = mapped_column(LargeBinary)
    figures_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # The province's acknowledgement exactly as signed: its evidence of agreement (D18).
    ack_message_id: Mapped[str] = mapped_column(String(64), default="")
    ack_payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    ack_key_id: Mapped[str] = mapped_column(String(64), default="")
    ack_signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
