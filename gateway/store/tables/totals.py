"""Running totals the operators' reads need, kept in the transaction of every change they count (no history scans).

Each total is split into shards (a hash of the subject's id) so that concurrent transactions of one province pair
on PostgreSQL rarely update the same row; a read adds the shards up: its cost is provinces x states x shards.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.tables.base import Base

TOTAL_SHARDS = 16


class TransferTotalRow(Base):
    """How many transfers of an ordered province pair are in a state now, and their amount."""

    __tablename__ = "transfer_totals"

    giver_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    receiver_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(BigInteger)
    amount_fen: Mapped[int] = mapped_column(BigInteger)


class OutboxTotalRow(Base):
    """A destination's outbox: messages not yet acknowledged or abandoned, send attempts, acknowledged messages."""

    __tablename__ = "outbox_totals"

    destination: Mapped[str] = mapped_column(String(6), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    pending: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(BigInteger)
    done: Mapped[int] = mapped_column(BigInteger)


class SettlementTotalRow(Base):
    """How many transfers of an ordered province pair were committed into a settlement window, and their amount:
    the figures its close freezes (D17), read without a scan of the window's transfers."""

    __tablename__ = "settlement_totals"

    window_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    giver_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    receiver_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(BigInteger)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
