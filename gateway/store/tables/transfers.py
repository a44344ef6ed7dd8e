"""Transfers, every state they entered, and their givers' days (D12)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.tables.base import Base, UtcDateTime


class TransferRow(Base):
    __tablename__ = "transfers"

    transfer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64), default="")
    giver_province: Mapped[str] = mapped_column(String(6))
    receiver_province: Mapped[str] = mapped_column(String(6))
    # Keyed hashes (HMAC-SHA256) of the ID numbers: people are found by these, never by clear ID (D19).
    giver_ref: Mapped[bytes] = mapped_column(LargeBinary(32))
    receiver_ref: Mapped[bytes] = mapped_column(LargeBinary(32))
    giver_id_masked: Mapped[str] = mapped_column(String(18))
    receiver_id_masked: Mapped[str] = mapped_column(String(18))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    binding_id: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    return_deadline: Mapped[datetime] = mapped_column(UtcDateTime)
    delivery_deadline: Mapped[datetime] = mapped_column(UtcDateTime)
    instruction_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    # The giver province's envelope exactly as received: passed through to the receiver's province.
    instruction_payload: Mapped[bytes] = mapped_column(LargeBinary)
    instruction_signer: Mapped[str] = mapped_column(String(16))
    instruction_key_id: Mapped[str] = mapped_column(String(64))
    instruction_alg: Mapped[str] = mapped_column(String(16))
    instruction_signature: Mapped[bytes] = mapped_column(LargeBinary)
    settlement_window_id: Mapped[str] = mapped_column(String(32), default="")

    # Only indexes a statement reads: each costs every insert and every state change a write (a state change is
    # never heap-only on PostgreSQL, `state` being indexed). tests/store/test_operator_read_plans.py checks it.
    __table_args__ = (
        # The return sweep: delivered transfers past their deadline, oldest deadline first.
        Index("ix_transfers_state_return_deadline", "state", "return_deadline"),
        # Operators' pages, newest or oldest first, the id breaking ties: one index range, no sort.
        Index("ix_transfers_created_at_transfer_id", "created_at", "transfer_id"),
        # Operators' transfers in a state, oldest or newest first (the dashboard's stuck ones, a list by state),
        # the id breaking ties: one index range, no sort.
        Index("ix_transfers_state_created_at", "state", "created_at", "transfer_id"),
    )


class TransferEventRow(Base):
    """Every state a transfer enters, in order: its history and the source of change feeds."""

    __tablename__ = "transfer_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    transfer_id: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64), default="")
    at: Mapped[datetime] = mapped_column(UtcDateTime)


class GiverDayRow(Base):
    """How many of a giver's transfers of one Beijing day count against the daily limit (D12).

    Kept with every transfer change, so a submission reads (and locks) one row instead of counting the
    giver's transfers of the day; the lock also puts one giver's concurrent submissions in a row.
    """

    __tablename__ = "giver_days"

    giver_ref: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
