"""SQL repositories and the unit of work over one SQLAlchemy connection per transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, create_engine, event, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.domain.envelope import Envelope
from gateway.domain.provinces import Policy, Province, ProvinceKey, ProvinceStatus
from gateway.domain.records import OutboxKind, OutboxMessage, RequestOutcome, StoredRequest
from gateway.domain.transfers import Transfer, TransferEvent, TransferState
from gateway.store.tables import (
    Base,
    OutboxRow,
    ProvinceKeyRow,
    ProvinceRow,
    RequestRow,
    TransferEventRow,
    TransferRow,
)

provinces_t: Table = ProvinceRow.__table__  # type: ignore[assignment]
keys_t: Table = ProvinceKeyRow.__table__  # type: ignore[assignment]
requests_t: Table = RequestRow.__table__  # type: ignore[assignment]
transfers_t: Table = TransferRow.__table__  # type: ignore[assignment]
events_t: Table = TransferEventRow.__table__  # type: ignore[assignment]
outbox_t: Table = OutboxRow.__table__  # type: ignore[assignment]


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy issue BEGIN itself so transactions are real (pysqlite's default defers them).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # IMMEDIATE takes the write lock up front: no deadlock-prone read-to-write upgrades.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def create_schema(engine: Engine) -> None:
    Base.metadata.create_all(engine)


def drop_schema(engine: Engine) -> None:
    Base.metadata.drop_all(engine)


def _insert_ignoring_conflict(conn: Connection, table: Table) -> Any:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise RuntimeError(f"unsupported database dialect {dialect}")


def _policy_to_json(policy: Policy) -> str:
    return json.dumps({name: getattr(policy, name) for name in Policy.__slots__ if getattr(policy, name) is not None},
                      sort_keys=True)


def _policy_from_json(text: str) -> Policy:
    values = json.loads(text or "{}")
    return Policy(**{k: v for k, v in values.items() if k in Policy.__slots__})


class SqlProvinceRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def _keys(self, codes: Sequence[str]) -> dict[str, list[ProvinceKey]]:
        rows = self._conn.execute(select(keys_t).where(keys_t.c.province_code.in_(codes)).order_by(keys_t.c.key_id))
        by_code: dict[str, list[ProvinceKey]] = {code: [] for code in codes}
        for row in rows:
            by_code[row.province_code].append(
                ProvinceKey(row.key_id, row.public_key, row.alg, row.valid_from, row.valid_until)
            )
        return by_code

    @staticmethod
    def _province(row: Any, keys: list[ProvinceKey]) -> Province:
        return Province(
            code=row.code, name=row.name, endpoint=row.endpoint, status=ProvinceStatus(row.status),
            keys=tuple(keys), policy=_policy_from_json(row.policy_json), updated_at=row.updated_at,
        )

    def get(self, code: str) -> Province | None:
        row = self._conn.execute(select(provinces_t).where(provinces_t.c.code == code)).first()
        if row is None:
            return None
        return self._province(row, self._keys([code])[code])

    def list(self) -> list[Province]:
        rows = self._conn.execute(select(provinces_t).order_by(provinces_t.c.code)).all()
        keys = self._keys([row.code for row in rows])
        return [self._province(row, keys[row.code]) for row in rows]

    def add(self, province: Province) -> None:
        self._conn.execute(provinces_t.insert().values(
            code=province.code, name=province.name, endpoint=province.endpoint, status=province.status.value,
            policy_json=_policy_to_json(province.policy), updated_at=province.updated_at,
        ))
        self._write_keys(province)

    def update(self, province: Province) -> None:
        self._conn.execute(provinces_t.update().where(provinces_t.c.code == province.code).values(
            name=province.name, endpoint=province.endpoint, status=province.status.value,
            policy_json=_policy_to_json(province.policy), updated_at=province.updated_at,
        ))
        self._write_keys(province)

    def _write_keys(self, province: Province) -> None:
        existing = {row.key_id for row in self._conn.execute(
            select(keys_t.c.key_id).where(keys_t.c.province_code == province.code))}
        for key in province.keys:
            values = {"alg": key.alg, "public_key": key.public_key, "valid_from": key.valid_from,
                      "valid_until": key.valid_until}
            if key.key_id in existing:
                self._conn.execute(keys_t.update().where(keys_t.c.key_id == key.key_id).values(**values))
            else:
                self._conn.execute(keys_t.insert().values(key_id=key.key_id, province_code=province.code,
                                                          **values))

    def key_owner(self, key_id: str) -> tuple[str, ProvinceKey] | None:
        row = self._conn.execute(select(keys_t).where(keys_t.c.key_id == key_id)).first()
        if row is None:
            return None
        return row.province_code, ProvinceKey(row.key_id, row.public_key, row.alg, row.valid_from, row.valid_until)


class SqlRequestRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, sender: str, message_id: str) -> StoredRequest | None:
        row = self._conn.execute(select(requests_t).where(
            and_(requests_t.c.sender == sender, requests_t.c.message_id == message_id))).first()
        if row is None:
            return None
        return StoredRequest(
            sender=row.sender, message_id=row.message_id, payload_type=row.payload_type,
            payload_sha256=row.payload_sha256, outcome=RequestOutcome(row.outcome), response=row.response,
            error_kind=row.error_kind, error_reason=row.error_reason, error_field=row.error_field,
            error_message=row.error_message,
        )

    def claim(self, sender: str, message_id: str, payload_type: str, payload_sha256: bytes,
              at: datetime) -> bool:
        """Insert the idempotency record; False if (sender, message_id) is already taken (unique key)."""
        statement = _insert_ignoring_conflict(self._conn, requests_t).values(
            sender=sender, message_id=message_id, payload_type=payload_type, payload_sha256=payload_sha256,
            outcome=RequestOutcome.PENDING.value, created_at=at,
        ).returning(requests_t.c.sender)
        # RETURNING, not rowcount: psycopg reports no row count for INSERT .. ON CONFLICT DO NOTHING.
        return self._conn.execute(statement).first() is not None

    def _where(self, sender: str, message_id: str) -> Any:
        return and_(requests_t.c.sender == sender, requests_t.c.message_id == message_id)

    def record_response(self, sender: str, message_id: str, response: bytes) -> None:
        self._conn.execute(requests_t.update().where(self._where(sender, message_id)).values(
            outcome=RequestOutcome.OK.value, response=response))

    def record_rejection(self, sender: str, message_id: str, kind: str, reason: str, field: str | None,
                         message: str) -> None:
        self._conn.execute(requests_t.update().where(self._where(sender, message_id)).values(
            outcome=RequestOutcome.REJECTED.value, error_kind=kind, error_reason=reason, error_field=field,
            error_message=message))


# Everything but the stored instruction envelope, which only deliveries need.
_VIEW_COLUMNS = tuple(
    c for c in transfers_t.c if not c.name.startswith("instruction_") or c.name == "instruction_sha256")


class SqlTransferRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, transfer: Transfer, giver_ref: bytes, receiver_ref: bytes, envelope: Envelope) -> None:
        self._conn.execute(transfers_t.insert().values(
            transfer_id=transfer.transfer_id, state=transfer.state.value, reason=transfer.reason,
            giver_province=transfer.giver_province, receiver_province=transfer.receiver_province,
            giver_ref=giver_ref, receiver_ref=receiver_ref, giver_id_masked=transfer.giver_id_masked,
            receiver_id_masked=transfer.receiver_id_masked, amount_fen=transfer.amount_fen,
            currency=transfer.currency, binding_id=transfer.binding_id, created_at=transfer.created_at,
            updated_at=transfer.updated_at, return_deadline=transfer.return_deadline,
            delivery_deadline=transfer.delivery_deadline, instruction_sha256=transfer.instruction_sha256,
            instruction_payload=envelope.payload, instruction_signer=envelope.signer,
            instruction_key_id=envelope.key_id, instruction_alg=envelope.alg,
            instruction_signature=envelope.signature, settlement_window_id=transfer.settlement_window_id,
        ))
        self.add_event(transfer.transfer_id, transfer.state, transfer.reason, transfer.created_at)


    def get(self, transfer_id: str, with_history: bool = False) -> Transfer | None:
        row = self._conn.execute(select(*_VIEW_COLUMNS).where(transfers_t.c.transfer_id == transfer_id)).first()
        if row is None:
            return None
        history: tuple[TransferEvent, ...] = ()
        if with_history:
            events = self._conn.execute(select(events_t).where(events_t.c.transfer_id == transfer_id)
                                        .order_by(events_t.c.id))
            history = tuple(TransferEvent(TransferState(e.state), e.at, e.reason) for e in events)
        return Transfer(
            transfer_id=row.transfer_id, state=TransferState(row.state), giver_province=row.giver_province,
            receiver_province=row.receiver_province, giver_id_masked=row.giver_id_masked,
            receiver_id_masked=row.receiver_id_masked, amount_fen=row.amount_fen, currency=row.currency,
            created_at=row.created_at, updated_at=row.updated_at, return_deadline=row.return_deadline,
            delivery_deadline=row.delivery_deadline, instruction_sha256=row.instruction_sha256,
            reason=row.reason, binding_id=row.binding_id, settlement_window_id=row.settlement_window_id,
            history=history,
        )

    def exists(self, transfer_id: str) -> bool:
        return self._conn.execute(select(transfers_t.c.transfer_id)
                                  .where(transfers_t.c.transfer_id == transfer_id)).first() is not None

    def instruction_envelope(self, transfer_id: str) -> Envelope | None:
        t = transfers_t.c
        row = self._conn.execute(select(t.instruction_payload, t.instruction_signer, t.instruction_key_id,
                                        t.instruction_alg, t.instruction_signature)
                                 .where(t.transfer_id == transfer_id)).first()
        if row is None:
            return None
        return Envelope(row.instruction_payload, "gongji.v1.TransferInstruction", row.instruction_signer,
                        row.instruction_key_id, row.instruction_alg, row.instruction_signature)

    def change_state(self, transfer_id: str, from_states: Sequence[TransferState], to: TransferState,
                     reason: str, at: datetime) -> bool:
        """Move the transfer only if it is in one of `from_states`: the guard makes each change happen once."""
        result = self._conn.execute(
            update(transfers_t)
            .where(and_(transfers_t.c.transfer_id == transfer_id,
                        transfers_t.c.state.in_([s.value for s in from_states])))
            .values(state=to.value, reason=reason, updated_at=at)
        )
        if result.rowcount != 1:
            return False
        self.add_event(transfer_id, to, reason, at)
        return True

    def add_event(self, transfer_id: str, state: TransferState, reason: str, at: datetime) -> None:
        self._conn.execute(events_t.insert().values(transfer_id=transfer_id, state=state.value, reason=reason, at=at))

    def due_for_return(self, now: datetime, limit: int) -> list[str]:
        rows = self._conn.execute(
            select(transfers_t.c.transfer_id)
            .where(and_(transfers_t.c.state == TransferState.DELIVERED.value, transfers_t.c.return_deadline <= now))
            .limit(limit))
        return [row.transfer_id for row in rows]

    def undelivered_past_deadline(self, now: datetime, limit: int) -> list[str]:
        rows = self._conn.execute(
            select(transfers_t.c.transfer_id)
            .where(and_(transfers_t.c.state == TransferState.RECEIVED.value,
                        transfers_t.c.delivery_deadline <= now))
            .limit(limit))
        return [row.transfer_id for row in rows]


class SqlOutboxRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def enqueue(self, destination: str, kind: OutboxKind, message_id: str, subject_id: str,
                at: datetime) -> None:
        # The unique (destination, message_id) key makes a second enqueue of the same message a no-op.
        self._conn.execute(_insert_ignoring_conflict(self._conn, outbox_t).values(
            destination=destination, kind=kind.value, message_id=message_id, subject_id=subject_id,
            status="PENDING", attempts=0, next_attempt_at=at, last_error="", created_at=at))

    def claim_due(self, now: datetime, limit: int, lease_until: datetime) -> list[OutboxMessage]:
        """Take due messages and lease them, so a crash mid-send only delays their retry."""
        query = (select(outbox_t).where(and_(outbox_t.c.status == "PENDING", outbox_t.c.next_attempt_at <= now))
                 .order_by(outbox_t.c.next_attempt_at, outbox_t.c.id).limit(limit))
        if self._conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = self._conn.execute(query).all()
        if rows:
            self._conn.execute(update(outbox_t).where(outbox_t.c.id.in_([r.id for r in rows]))
                               .values(next_attempt_at=lease_until, attempts=outbox_t.c.attempts + 1))
        return [OutboxMessage(r.id, r.destination, OutboxKind(r.kind), r.message_id, r.subject_id,
                              r.attempts + 1, r.created_at) for r in rows]

    def mark_done(self, message_id: int, at: datetime) -> None:
        self._conn.execute(update(outbox_t).where(and_(outbox_t.c.id == message_id, outbox_t.c.status == "PENDING"))
                           .values(status="DONE", done_at=at, last_error=""))

    def mark_retry(self, message_id: int, next_attempt_at: datetime, error: str) -> None:
        self._conn.execute(update(outbox_t).where(and_(outbox_t.c.id == message_id, outbox_t.c.status == "PENDING"))
                           .values(next_attempt_at=next_attempt_at, last_error=error[:128]))

    def expire_pending(self, kind: OutboxKind, subject_id: str, at: datetime, error: str) -> None:
        self._conn.execute(update(outbox_t).where(and_(outbox_t.c.kind == kind.value,
                                                       outbox_t.c.subject_id == subject_id,
                                                       outbox_t.c.status == "PENDING"))
                           .values(status="EXPIRED", done_at=at, last_error=error[:128]))


class SqlUnitOfWork:
    """One database transaction; leaving the block without commit() rolls it back."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __enter__(self) -> SqlUnitOfWork:
        self._conn = self._engine.connect()
        self._transaction = self._conn.begin()
        self.provinces = SqlProvinceRepository(self._conn)
        self.requests = SqlRequestRepository(self._conn)
        self.transfers = SqlTransferRepository(self._conn)
        self.outbox = SqlOutboxRepository(self._conn)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            self._conn.close()

    def commit(self) -> None:
        self._transaction.commit()


