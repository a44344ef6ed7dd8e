"""The database schema as SQLAlchemy 2.0 typed mappings (SQLite and PostgreSQL alike)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import BigInteger, Date, DateTime, Index, Integer, LargeBinary, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ProvinceRow(Base):
    __tablename__ = "provinces"

    code: Mapped[str] = mapped_column(String(6), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    policy_json: Mapped[str] = mapped_column(Text, default="{}")
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ProvinceKeyRow(Base):
    __tablename__ = "province_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    province_code: Mapped[str] = mapped_column(String(6), index=True)
    alg: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    valid_from: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    valid_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


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


class TransferRow(Base):
    __tablename__ = "transfers"

    transfer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64), default="")
    giver_province: Mapped[str] = mapped_column(String(6))
    receiver_province: Mapped[str] = mapped_column(String(6))
    # Keyed hashes (HMAC-SHA256) of the ID numbers: people are found by these, never by clear ID (D19).
    giver_ref: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    receiver_ref: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
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

    __table_args__ = (
        Index("ix_transfers_state_return_deadline", "state", "return_deadline"),
        Index("ix_transfers_created_at", "created_at"),
        Index("ix_transfers_binding_id", "binding_id"),
        Index("ix_transfers_settlement_window_id", "settlement_window_id"),
        Index("ix_transfers_giver_ref_created_at", "giver_ref", "created_at"),
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
    )


class RoutingVersionRow(Base):
    """One row whose version moves with every routing-table change: caches compare it, never the table."""

    __tablename__ = "routing_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


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

    __table_args__ = (Index("ix_bindings_state_consent_by", "state", "consent_by"),)


class MemberSuspensionRow(Base):
    """People whose networked settlement a province reported suspended (D3), by keyed hash.

    Keyed by the reporting province too: a province speaks only for its own members (D20), so its
    report binds the person as that province's member, and only it can lift it.
    """

    __tablename__ = "member_suspensions"

    person_ref: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    province: Mapped[str] = mapped_column(String(6), primary_key=True)
    since: Mapped[datetime] = mapped_column(UtcDateTime)


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
    """A closed window's frozen gross figure for one ordered province pair, and its payment (D17, D18)."""

    __tablename__ = "settlement_pairs"

    window_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    from_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    to_province: Mapped[str] = mapped_column(String(6), primary_key=True)
    gross_fen: Mapped[int] = mapped_column(BigInteger)
    transfer_count: Mapped[int] = mapped_column(BigInteger)
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


class GiverDayRow(Base):
    """How many of a giver's transfers of one Beijing day count against the daily limit (D12).

    Kept with every transfer change, so a submission reads (and locks) one row instead of counting the
    giver's transfers of the day; the lock also puts one giver's concurrent submissions in a row.
    """

    __tablename__ = "giver_days"

    giver_ref: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class AuditEntryRow(Base):
    """One entry of the tamper-evident record (see gateway/domain/audit.py); written, never updated."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=False)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    kind: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    entry_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditHeadRow(Base):
    """The chain's end: locked by each appending transaction, so entries are chained one transaction at a time."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditCheckpointRow(Base):
    """The gateway's signature over the chain's size and head at one moment."""

    __tablename__ = "audit_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class GatewayKeyRow(Base):
    """The gateway's own public signing keys, current and retiring (issue 5: rotation)."""

    __tablename__ = "gateway_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    valid_from: Mapped[datetime] = mapped_column(UtcDateTime)
    valid_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


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


# The tables as SQLAlchemy Core sees them, for building statements.
provinces_t: Table = ProvinceRow.__table__  # type: ignore[assignment]
keys_t: Table = ProvinceKeyRow.__table__  # type: ignore[assignment]
routing_version_t: Table = RoutingVersionRow.__table__  # type: ignore[assignment]
requests_t: Table = RequestRow.__table__  # type: ignore[assignment]
transfers_t: Table = TransferRow.__table__  # type: ignore[assignment]
events_t: Table = TransferEventRow.__table__  # type: ignore[assignment]
outbox_t: Table = OutboxRow.__table__  # type: ignore[assignment]
bindings_t: Table = BindingRow.__table__  # type: ignore[assignment]
suspensions_t: Table = MemberSuspensionRow.__table__  # type: ignore[assignment]
giver_days_t: Table = GiverDayRow.__table__  # type: ignore[assignment]
audit_t: Table = AuditEntryRow.__table__  # type: ignore[assignment]
gateway_keys_t: Table = GatewayKeyRow.__table__  # type: ignore[assignment]
audit_head_t: Table = AuditHeadRow.__table__  # type: ignore[assignment]
checkpoints_t: Table = AuditCheckpointRow.__table__  # type: ignore[assignment]
windows_t: Table = SettlementWindowRow.__table__  # type: ignore[assignment]
pairs_t: Table = SettlementPairRow.__table__  # type: ignore[assignment]
statements_t: Table = SettlementStatementRow.__table__  # type: ignore[assignment]
relation_queries_t: Table = RelationQueryRow.__table__  # type: ignore[assignment]

REASON_MAX = 64  # the width of every stored reason (transfers, their events, bindings, rejections)
