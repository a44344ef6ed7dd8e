"""The record of VerifyRelation queries (masked ID numbers only)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.tables.base import Base, UtcDateTime


class RelationQueryRow(Base):
    """Every VerifyRelation answered: who asked, about whom (masked ID numbers only, D19), when, and the answer.

    Only ever appended, and read by no call: indexed by time alone, so old rows can be pruned cheaply.
    """

    __tablename__ = "relation_queries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    asked_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    asking_province: Mapped[str] = mapped_column(String(6))
    receiver_province: Mapped[str] = mapped_column(String(6))
    message_id: Mapped[str] = mapped_column(String(64))
    # First 6 + last 4 (`650502********1230`), or "" when what was sent was not shaped like an ID number.
    giver_id_masked: Mapped[str] = mapped_column(String(18))
    receiver_id_masked: Mapped[str] = mapped_column(String(18))
    # "" when what was sent was not two digits.
    relation_code: Mapped[str] = mapped_column(String(2))
    # ELIGIBLE or NOT_ELIGIBLE.
    answer: Mapped[str] = mapped_column(String(16))
