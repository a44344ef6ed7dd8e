"""The quota regime (Q2-Q10): a quota per binding, its consumptions, reversals and changes, and running totals.

No personal data: the receiver is the binding's (compared by keyed hash), settlement references are not personal.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.tables.base import Base, UtcDateTime


class QuotaRow(Base):
    """A binding's quota (Q3): locked for every change, so two consumptions at once never over-draw it."""

    __tablename__ = "quotas"

    binding_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    giver_province: Mapped[str] = mapped_column(String(6))
    receiver_province: Mapped[str] = mapped_column(String(6))
    granted_fen: Mapped[int] = mapped_column(BigInteger)
    consumed_fen: Mapped[int] = mapped_column(BigInteger)
    released_fen: Mapped[int] = mapped_column(BigInteger)
    # How many changes it has had: each change is one row of quota_changes and one notice id.
    version: Mapped[int] = mapped_column(BigInteger)
    # Set once, when its binding ended and the unused quota was released (Q8): never twice.
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class QuotaChangeRow(Base):
    """One change of a quota, as the provinces are told it (QuotaNotice, ConsumptionNotice): the figures after it."""

    __tablename__ = "quota_changes"

    binding_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    change: Mapped[str] = mapped_column(String(16))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    released_fen: Mapped[int] = mapped_column(BigInteger)  # of amount_fen, what went back to the giver
    granted_after_fen: Mapped[int] = mapped_column(BigInteger)
    consumed_after_fen: Mapped[int] = mapped_column(BigInteger)
    released_after_fen: Mapped[int] = mapped_column(BigInteger)
    cause_id: Mapped[str] = mapped_column(String(64))
    consumption_id: Mapped[str] = mapped_column(String(64), default="")  # a draw's or a reversal's consumption
    # What had been reversed of that consumption after this change (its notice tells it as it stood then).
    consumption_reversed_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    clearing_window_id: Mapped[str] = mapped_column(String(10), default="")
    at: Mapped[datetime] = mapped_column(UtcDateTime)


class ConsumptionRow(Base):
    """One draw on a quota (Q4), keyed by the receiver province's message id; what has been reversed of it."""

    __tablename__ = "consumptions"

    receiver_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    consumption_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    settlement_ref: Mapped[str] = mapped_column(String(64))
    binding_id: Mapped[str] = mapped_column(String(64))
    giver_province: Mapped[str] = mapped_column(String(6))
    kind: Mapped[str] = mapped_column(String(16))
    requested_fen: Mapped[int] = mapped_column(BigInteger)
    drawn_fen: Mapped[int] = mapped_column(BigInteger)
    reversed_fen: Mapped[int] = mapped_column(BigInteger)
    clearing_window_id: Mapped[str] = mapped_column(String(10))
    care_pooling_area: Mapped[str] = mapped_column(String(6))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        # A province's settlement reference names one consumption: reversals find it by it.
        UniqueConstraint("receiver_province", "settlement_ref", name="uq_consumptions_province_settlement_ref"),
        # A binding's consumptions newest first, a page at a time (GetQuota, InspectQuota).
        Index("ix_consumptions_binding_created_at", "binding_id", "created_at", "consumption_id"),
    )


class ConsumptionReversalRow(Base):
    """A reversal of a consumption, wholly or partly (Q7), keyed by its sender's message id."""

    __tablename__ = "consumption_reversals"

    sender: Mapped[str] = mapped_column(String(6), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    consumption_id: Mapped[str] = mapped_column(String(64))
    binding_id: Mapped[str] = mapped_column(String(64))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    released_fen: Mapped[int] = mapped_column(BigInteger)  # the binding had ended: released to the giver
    reason: Mapped[str] = mapped_column(String(64))
    clearing_window_id: Mapped[str] = mapped_column(String(10))
    at: Mapped[datetime] = mapped_column(UtcDateTime)


class QuotaTotalRow(Base):
    """Sums over the quotas of an ordered province pair (GetStats, /metrics), sharded as the transfers' totals."""

    __tablename__ = "quota_totals"

    giver_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    receiver_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    granted_fen: Mapped[int] = mapped_column(BigInteger)
    consumed_fen: Mapped[int] = mapped_column(BigInteger)
    released_fen: Mapped[int] = mapped_column(BigInteger)
    consumption_count: Mapped[int] = mapped_column(BigInteger)


class ClearingTotalRow(Base):
    """A clearing month's consumptions and reversals of an ordered pair (Q10), so closing it reads O(pairs) rows.

    Sharded like the other totals: sum the shards of a (month, giver, receiver).
    """

    __tablename__ = "clearing_totals"

    clearing_window_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    giver_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    receiver_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    consumed_fen: Mapped[int] = mapped_column(BigInteger)
    reversed_fen: Mapped[int] = mapped_column(BigInteger)
    consumption_count: Mapped[int] = mapped_column(BigInteger)
    reversal_count: Mapped[int] = mapped_column(BigInteger)
