"""Bindings between givers and receivers, and members' suspensions (D3, D8-D10)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.tables.base import Base, UtcDateTime


class BindingRow(Base):
    """A giver-receiver relation across provinces (D8-D10)."""

    __tablename__ = "bindings"

    binding_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64), default="")
    giver_province: Mapped[str] = mapped_column(String(6))
    receiver_province: Mapped[str] = mapped_column(String(6))
    giver_ref: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    receiver_ref: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    giver_id_masked: Mapped[str] = mapped_column(String(18))
    receiver_id_masked: Mapped[str] = mapped_column(String(18))
    relation_code: Mapped[str] = mapped_column(String(2))
    authorised_amount_fen: Mapped[int] = mapped_column(BigInteger)
    # Sum of the binding's transfers that have not failed (D10), kept with every transfer change so a
    # submission reads one row instead of summing the binding's history.
    used_amount_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    consent_by: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    attestation_method: Mapped[str] = mapped_column(String(32), default="")
    evidence_ref: Mapped[str] = mapped_column(String(128), default="")
    attested_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    proposal_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    # The giver province's envelope exactly as received: passed on with the consent request.
    proposal_payload: Mapped[bytes] = mapped_column(LargeBinary)
    proposal_signer: Mapped[str] = mapped_column(String(16))
    proposal_key_id: Mapped[str] = mapped_column(String(64))
    proposal_alg: Mapped[str] = mapped_column(String(16))
    proposal_signature: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (
        Index("ix_bindings_state_consent_by", "state", "consent_by"),
        # Operators' lists, newest first: by state, or by state and either side's province (one range each).
        Index("ix_bindings_state_created_at", "state", "created_at", "binding_id"),
        Index("ix_bindings_giver_province_state_created_at", "giver_province", "state", "created_at", "binding_id"),
        Index("ix_bindings_receiver_province_state_created_at", "receiver_province", "state", "created_at",
              "binding_id"),
    )


class MemberSuspensionRow(Base):
    """People whose networked settlement a province reported suspended (D3), by keyed hash.

    Keyed by the reporting province too: a province speaks only for its own members (D20), so its
    report binds the person as that province's member, and only it can lift it.
    """

    __tablename__ = "member_suspensions"

    person_ref: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    province: Mapped[str] = mapped_column(String(6), primary_key=True)
    since: Mapped[datetime] = mapped_column(UtcDateTime)
