"""SQL repositories and the unit of work: one database transaction per unit of work.

Statements are built with SQLAlchemy from the typed tables and compiled once per engine (see
prepared.py); the routing table is cached per engine and reloaded whenever its version row changes,
so a change by any gateway process is seen on the next call without reading every row every time.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    case,
    cast,
    create_engine,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import ClauseElement

from gateway.domain.audit import GENESIS, AuditEntry, AuditEvent, Checkpoint, chain
from gateway.domain.bindings import Attestation, Binding, BindingState
from gateway.domain.eligibility import AttestationMethod
from gateway.domain.envelope import Envelope
from gateway.domain.monitoring import PairStateFigure, Stats, TransferChange, TransferFilter
from gateway.domain.policy import beijing_day
from gateway.domain.provinces import Policy, Province, ProvinceKey, ProvinceStatus
from gateway.domain.records import OutboxKind, OutboxMessage, RequestOutcome, StoredRequest
from gateway.domain.relations import RelationQueryRecord
from gateway.domain.settlement import (
    Acknowledgement,
    PairFigure,
    Payment,
    SettlementWindow,
    WindowSpan,
    WindowState,
)
from gateway.domain.transfers import Transfer, TransferEvent, TransferState
from gateway.store.prepared import Cursor, Prepared, contention
from gateway.store.tables import (
    AuditCheckpointRow,
    AuditEntryRow,
    AuditHeadRow,
    Base,
    BindingRow,
    GatewayKeyRow,
    GiverDayRow,
    MemberSuspensionRow,
    OutboxRow,
    ProvinceKeyRow,
    ProvinceRow,
    RelationQueryRow,
    RequestRow,
    RoutingVersionRow,
    SettlementPairRow,
    SettlementStatementRow,
    SettlementWindowRow,
    TransferEventRow,
    TransferRow,
)

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

FIGURES_TYPE = "gongji.v1.SettlementFigures"
REASON_MAX = 64  # transfers.reason and transfer_events.reason
_FAILED = frozenset({TransferState.DECLINED, TransferState.RETURNED, TransferState.REJECTED})

log = logging.getLogger(__name__)


def _suspended_in(person_ref: Any, province: Any) -> Any:
    """The suspension a province reported for a person (D3), which binds them only as its member (D20)."""
    return and_(suspensions_t.c.person_ref == person_ref, suspensions_t.c.province == province)


# How SQLite syncs its write-ahead log: at every commit (FULL), or at checkpoints only (NORMAL).
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")


def make_engine(url: str, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout, and transactions we begin ourselves."""
    if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"sqlite_synchronous must be one of {SQLITE_SYNCHRONOUS}, got {sqlite_synchronous!r}")
    if url.startswith("sqlite"):
        # No reset-on-return: every unit of work ends its own transaction with COMMIT or ROLLBACK.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_reset_on_return=None)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Autocommit at the driver: the unit of work issues BEGIN IMMEDIATE itself, which takes the
            # write lock up front (no deadlock-prone read-to-write upgrade between processes).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, pool_reset_on_return=None)


def create_schema(engine: Engine) -> None:
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        if conn.execute(select(routing_version_t.c.version)).first() is None:
            conn.execute(routing_version_t.insert().values(id=1, version=0))
        if conn.execute(select(audit_head_t.c.size)).first() is None:
            conn.execute(audit_head_t.insert().values(id=1, size=0, head_hash=GENESIS))


def _aware(value: Any) -> datetime | None:
    """An aggregate (MIN) skips the column's type on some drivers: read SQLite's text as UTC too."""
    if value is None:
        return None
    at: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _policy_to_json(policy: Policy) -> str:
    return json.dumps({name: getattr(policy, name) for name in Policy.__slots__ if getattr(policy, name) is not None},
                      sort_keys=True)


def _policy_from_json(text: str) -> Policy:
    values = json.loads(text or "{}")
    return Policy(**{k: v for k, v in values.items() if k in Policy.__slots__})


def _b(name: str) -> Any:
    return bindparam(name)


_TRANSFER_VIEW = [c for c in transfers_t.c if not c.name.startswith("instruction_") or c.name == "instruction_sha256"]
_INSTRUCTION = [transfers_t.c.instruction_payload, transfers_t.c.instruction_signer, transfers_t.c.instruction_key_id,
                transfers_t.c.instruction_alg, transfers_t.c.instruction_signature]


_BINDING_VIEW = [c for c in bindings_t.c if not c.name.startswith("proposal_") or c.name == "proposal_sha256"]
_PROPOSAL = [bindings_t.c.proposal_payload, bindings_t.c.proposal_signer, bindings_t.c.proposal_key_id,
             bindings_t.c.proposal_alg, bindings_t.c.proposal_signature]


class Statements:
    """Every statement the repositories run, compiled for one dialect."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert

        def p(statement: ClauseElement) -> Prepared:
            return Prepared(statement, dialect)

        t, o, r = transfers_t.c, outbox_t.c, requests_t.c
        self.routing_version = p(select(routing_version_t.c.version).where(routing_version_t.c.id == 1))
        self.bump_routing_version = p(update(routing_version_t).where(routing_version_t.c.id == 1)
                                      .values(version=routing_version_t.c.version + 1))
        self.all_provinces = p(select(provinces_t).order_by(provinces_t.c.code))
        self.all_keys = p(select(keys_t).order_by(keys_t.c.key_id))
        self.insert_province = p(provinces_t.insert())
        self.update_province = p(update(provinces_t).where(provinces_t.c.code == _b("w_code")).values(
            name=_b("name"), endpoint=_b("endpoint"), status=_b("status"), policy_json=_b("policy_json"),
            updated_at=_b("updated_at")))
        self.insert_key = p(keys_t.insert())
        self.update_key = p(update(keys_t).where(keys_t.c.key_id == _b("w_key_id")).values(
            alg=_b("alg"), public_key=_b("public_key"), valid_from=_b("valid_from"), valid_until=_b("valid_until")))

        self.get_request = p(select(requests_t).where(and_(r.sender == _b("w_sender"), r.message_id == _b("w_id"))))
        self.claim_request = p(insert(requests_t).on_conflict_do_nothing().returning(r.sender))
        self.record_response = p(update(requests_t).where(and_(r.sender == _b("w_sender"), r.message_id == _b("w_id")))
                                 .values(outcome=_b("outcome"), response=_b("response")))
        self.record_rejection = p(update(requests_t)
                                  .where(and_(r.sender == _b("w_sender"), r.message_id == _b("w_id")))
                                  .values(outcome=_b("outcome"), error_kind=_b("error_kind"),
                                          error_reason=_b("error_reason"), error_field=_b("error_field"),
                                          error_message=_b("error_message")))

        # A taken id is an answer (TRANSFER_ID_TAKEN), not an error: two provinces may race for one id.
        self.insert_transfer = p(insert(transfers_t).on_conflict_do_nothing().returning(t.transfer_id))
        self.insert_event = p(events_t.insert().values(transfer_id=_b("transfer_id"), state=_b("state"),
                                                       reason=_b("reason"), at=_b("at")))
        self.get_transfer = p(select(*_TRANSFER_VIEW).where(t.transfer_id == _b("w_id")))
        e = events_t.c
        self.changes_after = p(select(e.id, e.transfer_id, e.state, e.at, e.reason, t.giver_province,
                                      t.receiver_province, t.amount_fen)
                               .join_from(events_t, transfers_t, e.transfer_id == t.transfer_id)
                               .where(e.id > _b("after")).order_by(e.id).limit(_b("limit")))
        self.last_change = p(select(func.max(e.id)))
        # PostgreSQL numbers a change before it commits; a watcher passes a missing number once every writing
        # transaction of this database that had begun when it saw the gap has ended (other databases on the
        # cluster do not hold it up). SQLite needs neither: its one writer at a time commits in number order.
        postgres = dialect.name == "postgresql"
        self.database_now: Prepared | None = p(text("SELECT clock_timestamp()")) if postgres else None
        self.writers_begun_by: Prepared | None = (
            p(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                   "AND backend_xid IS NOT NULL AND xact_start <= :since")) if postgres else None)
        self.transfer_counted_in = p(select(t.binding_id, t.amount_fen, t.giver_ref, t.created_at)
                                     .where(t.transfer_id == _b("w_id")))
        self.transfer_exists = p(select(t.transfer_id).where(t.transfer_id == _b("w_id")))
        self.transfer_suspended_parties = p(
            select(*(select(suspensions_t.c.person_ref).where(_suspended_in(ref, province)).exists()
                     for ref, province in ((t.giver_ref, t.giver_province), (t.receiver_ref, t.receiver_province))))
            .where(t.transfer_id == _b("w_id")))
        self.history = p(select(events_t.c.state, events_t.c.at, events_t.c.reason)
                         .where(events_t.c.transfer_id == _b("w_id")).order_by(events_t.c.id))
        self.instruction = p(select(*_INSTRUCTION).where(t.transfer_id == _b("w_id")))
        self.change_state = p(update(transfers_t).where(and_(t.transfer_id == _b("w_id"), t.state == _b("w_from")))
                              .values(state=_b("state"), reason=_b("reason"), updated_at=_b("updated_at")))
        self.due_for_return = p(select(t.transfer_id).where(and_(t.state == TransferState.DELIVERED.value,
                                                                 t.return_deadline <= _b("now")))
                                .order_by(t.return_deadline).limit(_b("limit")))
        self.undelivered = p(select(t.transfer_id).where(and_(t.state == TransferState.RECEIVED.value,
                                                              t.delivery_deadline <= _b("now")))
                             .order_by(t.delivery_deadline).limit(_b("limit")))

        b = bindings_t.c
        self.insert_binding = p(insert(bindings_t).on_conflict_do_nothing().returning(bindings_t.c.binding_id))
        self.get_binding = p(select(*_BINDING_VIEW).where(b.binding_id == _b("w_id")))
        # SQLite renders no FOR UPDATE (its writers are one at a time anyway).
        self.lock_binding = p(select(*_BINDING_VIEW).where(b.binding_id == _b("w_id")).with_for_update())
        self.binding_exists = p(select(b.binding_id).where(b.binding_id == _b("w_id")))
        self.proposal = p(select(*_PROPOSAL).where(b.binding_id == _b("w_id")))
        self.change_binding_state = p(update(bindings_t).where(and_(b.binding_id == _b("w_id"),
                                                                    b.state == _b("w_from")))
                                      .values(state=_b("state"), reason=_b("reason"), updated_at=_b("updated_at")))
        self.attest_binding = p(update(bindings_t).where(b.binding_id == _b("w_id")).values(
            attestation_method=_b("attestation_method"), evidence_ref=_b("evidence_ref"),
            attested_at=_b("attested_at")))
        self.bindings_of_person = p(select(*_BINDING_VIEW).where(
            (b.giver_ref == _b("ref")) | (b.receiver_ref == _b("ref"))).order_by(b.created_at))
        self.expired_proposals = p(select(b.binding_id).where(and_(b.state == "PROPOSED", b.consent_by <= _b("now")))
                                   .order_by(b.consent_by).limit(_b("limit")))
        self.add_used = p(update(bindings_t).where(b.binding_id == _b("w_id"))
                          .values(used_amount_fen=b.used_amount_fen + _b("amount")))
        d = giver_days_t.c
        self.reserve_daily_slot = p(insert(giver_days_t).values(giver_ref=_b("ref"), day=_b("day"), count=1)
                                    .on_conflict_do_update(index_elements=[d.giver_ref, d.day],
                                                           set_={"count": d.count + 1})
                                    .returning(d.count))
        self.release_daily_slot = p(update(giver_days_t).where(and_(d.giver_ref == _b("ref"), d.day == _b("day")))
                                    .values(count=d.count - 1))
        # A person's relations are decided one transaction at a time (D8) on PostgreSQL; SQLite has one writer.
        self.lock_person = (p(select(func.pg_advisory_xact_lock(cast(_b("key"), BigInteger))))
                            if postgres else None)
        # The routing table and the gateway's keys are read, then written, by whoever changes them (gateways
        # starting together apply one manifest and register one key): one such transaction at a time.
        # The mode lets readers through and conflicts with itself and with every writer.
        self.lock_routing: Prepared | None = (
            p(text("LOCK TABLE provinces, province_keys IN SHARE ROW EXCLUSIVE MODE")) if postgres else None)
        self.lock_gateway_keys: Prepared | None = (
            p(text("LOCK TABLE gateway_keys IN SHARE ROW EXCLUSIVE MODE")) if postgres else None)
        self.suspend_member = p(insert(suspensions_t).on_conflict_do_nothing())
        self.resume_member = p(suspensions_t.delete().where(_suspended_in(_b("ref"), _b("province"))))
        self.member_suspended = p(select(suspensions_t.c.person_ref).where(_suspended_in(_b("ref"), _b("province"))))

        w = windows_t.c
        self.ensure_window = p(insert(windows_t).on_conflict_do_nothing().values(
            window_id=_b("window_id"), state=WindowState.OPEN.value, opens_at=_b("opens_at"),
            closes_at=_b("closes_at"), updated_at=_b("at")))
        # Shared by every commit into the window, exclusive for closing it: a commit and a close are
        # ordered, so a transfer lands in exactly one window's figures (D16).
        self.window_state_for_commit = p(select(w.state).where(w.window_id == _b("w_id")).with_for_update(read=True))
        self.window_state_for_close = p(select(w.state).where(w.window_id == _b("w_id")).with_for_update())
        self.assign_window = p(update(transfers_t).where(t.transfer_id == _b("w_id"))
                               .values(settlement_window_id=_b("window_id")))

        a, h = audit_t.c, audit_head_t.c
        # Locked for the last moments of each appending transaction: entries are chained in commit order.
        self.audit_head_for_append = p(select(h.size, h.head_hash).where(h.id == 1).with_for_update())
        self.audit_head = p(select(h.size, h.head_hash).where(h.id == 1))
        self.move_audit_head = p(update(audit_head_t).where(h.id == 1).values(size=_b("size"),
                                                                               head_hash=_b("head_hash")))
        self.insert_audit = p(audit_t.insert())
        c = checkpoints_t.c
        self.insert_checkpoint = p(insert(checkpoints_t).on_conflict_do_nothing())
        self.checkpoints = p(select(c.size, c.head_hash, c.at, c.payload, c.key_id, c.signature).order_by(c.size))
        self.last_checkpoint = p(select(func.max(c.size)))
        self.audit_entries = p(select(a.seq, a.kind, a.subject_id, a.action, a.at, a.detail, a.prev_hash, a.entry_hash)
                               .where(a.seq > _b("after")).order_by(a.seq).limit(_b("limit")))

        def queued(attempts: int, due: Any) -> Any:
            return insert(outbox_t).on_conflict_do_nothing().values(
                destination=_b("destination"), kind=_b("kind"), message_id=_b("message_id"),
                subject_id=_b("subject_id"), status="PENDING", attempts=attempts, next_attempt_at=due,
                last_error="", created_at=_b("at"))

        self.insert_relation_query = p(insert(relation_queries_t).values(
            asked_at=_b("asked_at"), asking_province=_b("asking_province"), receiver_province=_b("receiver_province"),
            message_id=_b("message_id"), giver_id_masked=_b("giver_id_masked"),
            receiver_id_masked=_b("receiver_id_masked"), relation_code=_b("relation_code"), answer=_b("answer")))
        self.enqueue = p(queued(0, _b("at")))
        # Written as a claim would leave it: its first attempt counted, due again when the lease ends.
        self.enqueue_leased = p(queued(1, _b("lease_until")).returning(o.id))
        self.release_lease = p(update(outbox_t).where(and_(o.id == _b("w_id"), o.status == "PENDING"))
                               .values(next_attempt_at=_b("now"), attempts=o.attempts - 1))
        due = (select(o.id, o.destination, o.kind, o.message_id, o.subject_id, o.attempts, o.created_at)
               .where(and_(o.status == "PENDING", o.next_attempt_at <= _b("now")))
               .order_by(o.next_attempt_at, o.id).limit(_b("limit")))
        if dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)  # several gateways share the outbox
        self.claim_due = p(due)
        self.lease = p(update(outbox_t).where(o.id == _b("w_id"))
                       .values(next_attempt_at=_b("lease_until"), attempts=o.attempts + 1))
        self.mark_done = p(update(outbox_t).where(and_(o.id == _b("w_id"), o.status == "PENDING"))
                           .values(status="DONE", done_at=_b("at"), last_error=""))
        self.mark_retry = p(update(outbox_t).where(and_(o.id == _b("w_id"), o.status == "PENDING"))
                            .values(next_attempt_at=_b("next_attempt_at"), last_error=_b("error")))
        self.expire_pending = p(update(outbox_t).where(and_(o.kind == _b("w_kind"), o.subject_id == _b("w_subject"),
                                                            o.status == "PENDING"))
                                .values(status="EXPIRED", done_at=_b("at"), last_error=_b("error")))


class RoutingCache:
    """The routing table of one database, reloaded when its version row moves (shared by threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version: int | None = None
        self._provinces: dict[str, Province] = {}
        self._key_owners: dict[str, tuple[str, ProvinceKey]] = {}

    def snapshot(self, cursor: Cursor, statements: Statements) -> tuple[dict[str, Province],
                                                                         dict[str, tuple[str, ProvinceKey]]]:
        row = cursor.first(statements.routing_version)
        version = int(row[0]) if row else 0
        with self._lock:
            if version == self._version:
                return self._provinces, self._key_owners
        keys: dict[str, list[ProvinceKey]] = {}
        owners: dict[str, tuple[str, ProvinceKey]] = {}
        names = statements.all_keys.columns
        for raw in cursor.all(statements.all_keys):
            k = dict(zip(names, raw, strict=True))
            key = ProvinceKey(k["key_id"], bytes(k["public_key"]), k["alg"], k["valid_from"], k["valid_until"])
            keys.setdefault(k["province_code"], []).append(key)
            owners[key.key_id] = (k["province_code"], key)
        provinces = {}
        names = statements.all_provinces.columns
        for raw in cursor.all(statements.all_provinces):
            v = dict(zip(names, raw, strict=True))
            provinces[v["code"]] = Province(
                code=v["code"], name=v["name"], endpoint=v["endpoint"], status=ProvinceStatus(v["status"]),
                keys=tuple(keys.get(v["code"], ())), policy=_policy_from_json(v["policy_json"]),
                updated_at=v["updated_at"])
        with self._lock:
            self._version, self._provinces, self._key_owners = version, provinces, owners
        return provinces, owners


class Sealer(Protocol):
    """Encrypts stored values that hold personal data; `place` binds a value to its table, column and row."""

    def seal(self, plaintext: bytes, place: bytes) -> bytes: ...
    def open(self, sealed: bytes, place: bytes) -> bytes: ...


class _NoSealer:
    def seal(self, plaintext: bytes, place: bytes) -> bytes:
        raise RuntimeError("no sealer configured for this database: personal data is never stored in clear")

    def open(self, sealed: bytes, place: bytes) -> bytes:
        return self.seal(sealed, place)


class SqlStore:
    """What every unit of work on one engine shares: compiled statements, the routing cache, the sealer."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements = Statements(engine)
        self.routing = RoutingCache()
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.sealer: Sealer = _NoSealer()


_STORES: weakref.WeakKeyDictionary[Engine, SqlStore] = weakref.WeakKeyDictionary()
_STORES_LOCK = threading.Lock()


def store_for(engine: Engine) -> SqlStore:
    with _STORES_LOCK:
        store = _STORES.get(engine)
        if store is None:
            store = _STORES[engine] = SqlStore(engine)
        return store


def use_sealer(engine: Engine, sealer: Sealer) -> None:
    """How this database's personal data is encrypted at rest (the instruction and proposal payloads)."""
    store_for(engine).sealer = sealer


def _instruction_place(transfer_id: str) -> bytes:
    return b"transfers.instruction_payload:" + transfer_id.encode()


def _proposal_place(binding_id: str) -> bytes:
    return b"bindings.proposal_payload:" + binding_id.encode()


def _when(province: Province) -> datetime:
    if province.updated_at is None:
        raise ValueError("a province is stored with the time of its change")
    return province.updated_at


class SqlProvinceRepository:
    def __init__(self, cursor: Cursor, store: SqlStore, audit: SqlAuditLog) -> None:
        self._cursor, self._s, self._store, self._audit = cursor, store.statements, store, audit
        self._snapshot: tuple[dict[str, Province], dict[str, tuple[str, ProvinceKey]]] | None = None

    def _routing(self) -> tuple[dict[str, Province], dict[str, tuple[str, ProvinceKey]]]:
        # Read the version once per unit of work: one cheap query instead of the whole table.
        if self._snapshot is None:
            self._snapshot = self._store.routing.snapshot(self._cursor, self._s)
        return self._snapshot

    def lock(self) -> None:
        """Until the transaction ends, no other transaction changes the routing table (taken before reading
        it, so what is read is what is changed). SQLite needs no lock: its writers take it at BEGIN."""
        assert self._snapshot is None, "lock before the first read"
        if self._s.lock_routing is not None:
            self._cursor.run(self._s.lock_routing)

    def get(self, code: str) -> Province | None:
        return self._routing()[0].get(code)

    def list(self) -> list[Province]:
        return sorted(self._routing()[0].values(), key=lambda p: p.code)

    def key_owner(self, key_id: str) -> tuple[str, ProvinceKey] | None:
        return self._routing()[1].get(key_id)

    def _values(self, province: Province) -> dict[str, Any]:
        return {"name": province.name, "endpoint": province.endpoint, "status": province.status.value,
                "policy_json": _policy_to_json(province.policy), "updated_at": province.updated_at}

    def add(self, province: Province) -> None:
        self._cursor.run(self._s.insert_province, code=province.code, **self._values(province))
        self._write_keys(province, existing=set())
        self._changed()
        self._audit.record("province", province.code, "REGISTERED", _when(province), self._describe(province))

    @staticmethod
    def _describe(province: Province) -> str:
        keys = ",".join(f"{k.key_id}:{k.public_key.hex()}:{k.valid_from.isoformat() if k.valid_from else ''}:"
                        f"{k.valid_until.isoformat() if k.valid_until else ''}" for k in province.keys)
        return f"name={json.dumps(province.name, ensure_ascii=False)} status={province.status.value} " \
               f"endpoint={province.endpoint} keys={keys} policy={_policy_to_json(province.policy)}"

    def update(self, province: Province) -> None:
        self._cursor.run(self._s.update_province, w_code=province.code, **self._values(province))
        current = self._routing()[0].get(province.code)
        self._write_keys(province, existing={k.key_id for k in current.keys} if current else set())
        self._changed()
        self._audit.record("province", province.code, "UPDATED", _when(province), self._describe(province))

    def _write_keys(self, province: Province, existing: set[str]) -> None:
        for key in province.keys:
            values = {"alg": key.alg, "public_key": key.public_key, "valid_from": key.valid_from,
                      "valid_until": key.valid_until}
            if key.key_id in existing:
                self._cursor.run(self._s.update_key, w_key_id=key.key_id, **values)
            else:
                self._cursor.run(self._s.insert_key, key_id=key.key_id, province_code=province.code, **values)

    def _changed(self) -> None:
        self._cursor.run(self._s.bump_routing_version)
        self._snapshot = None


class SqlRequestRepository:
    def __init__(self, cursor: Cursor, store: SqlStore) -> None:
        self._cursor, self._s = cursor, store.statements

    def get(self, sender: str, message_id: str) -> StoredRequest | None:
        raw = self._cursor.first(self._s.get_request, w_sender=sender, w_id=message_id)
        if raw is None:
            return None
        v = dict(zip(self._s.get_request.columns, raw, strict=True))
        return StoredRequest(
            sender=v["sender"], message_id=v["message_id"], payload_type=v["payload_type"],
            payload_sha256=bytes(v["payload_sha256"]), outcome=RequestOutcome(v["outcome"]),
            response=bytes(v["response"]) if v["response"] is not None else None, error_kind=v["error_kind"],
            error_reason=v["error_reason"], error_field=v["error_field"], error_message=v["error_message"])

    def claim(self, sender: str, message_id: str, payload_type: str, payload_sha256: bytes,
              at: datetime) -> bool:
        """Insert the idempotency record; False if (sender, message_id) is taken (the unique key decides)."""
        # RETURNING, not rowcount: psycopg reports no row count for INSERT .. ON CONFLICT DO NOTHING.
        return self._cursor.first(
            self._s.claim_request, sender=sender, message_id=message_id, payload_type=payload_type,
            payload_sha256=payload_sha256, outcome=RequestOutcome.PENDING.value, response=None, error_kind=None,
            error_reason=None, error_field=None, error_message=None, created_at=at) is not None

    def record_response(self, sender: str, message_id: str, response: bytes) -> None:
        self._cursor.run(self._s.record_response, w_sender=sender, w_id=message_id,
                         outcome=RequestOutcome.OK.value, response=response)

    def record_rejection(self, sender: str, message_id: str, kind: str, reason: str, field: str | None,
                         message: str) -> None:
        self._cursor.run(self._s.record_rejection, w_sender=sender, w_id=message_id,
                         outcome=RequestOutcome.REJECTED.value, error_kind=kind, error_reason=reason[:REASON_MAX],
                         error_field=field, error_message=message)


class SqlTransferRepository:
    def __init__(self, cursor: Cursor, store: SqlStore, audit: SqlAuditLog) -> None:
        self._cursor, self._s, self._dialect, self._audit = cursor, store.statements, store.engine.dialect, audit
        self._sealer = store.sealer

    def page(self, where: TransferFilter, after: tuple[datetime, str] | None, limit: int) -> list[Transfer]:
        """Transfers in (created_at, transfer_id) order after `after`: new ones only ever come later."""
        t = transfers_t.c
        query = select(*_TRANSFER_VIEW)
        if where.states:
            query = query.where(or_(*(t.state == state.value for state in where.states)))
        if where.giver_province:
            query = query.where(t.giver_province == where.giver_province)
        if where.receiver_province:
            query = query.where(t.receiver_province == where.receiver_province)
        if where.created_from is not None:
            query = query.where(t.created_at >= where.created_from)
        if where.created_to is not None:
            query = query.where(t.created_at < where.created_to)
        if after is not None:
            query = query.where(or_(t.created_at > after[0], and_(t.created_at == after[0], t.transfer_id > after[1])))
        # Operator queries vary in shape and are rare: compiled per call, run like every other statement.
        statement = Prepared(query.order_by(t.created_at, t.transfer_id).limit(limit), self._dialect)
        return [self._transfer(dict(zip(statement.columns, raw, strict=True))) for raw in self._cursor.all(statement)]

    def changes_after(self, position: int, limit: int) -> list[TransferChange]:
        rows = self._cursor.all(self._s.changes_after, after=position, limit=limit)
        return [TransferChange(int(i), tid, TransferState(state), at, reason, giver, receiver, int(amount))
                for i, tid, state, at, reason, giver, receiver, amount in rows]

    def last_change(self) -> int:
        row = self._cursor.first(self._s.last_change)
        return int(row[0]) if row and row[0] is not None else 0

    def writers_horizon(self) -> datetime | None:
        """A mark of now: writing transactions begun by then can be waited for (None on SQLite, where a
        gap is always a rollback)."""
        row = self._cursor.first(self._s.database_now) if self._s.database_now is not None else None
        return row[0] if row else None

    def writers_ended(self, horizon: datetime | None) -> bool:
        """True once every writing transaction of this database begun by `horizon` has ended."""
        if self._s.writers_begun_by is None or horizon is None:
            return True
        row = self._cursor.first(self._s.writers_begun_by, since=horizon)
        return row is not None and int(row[0]) == 0

    def stats(self) -> Stats:
        t, o = transfers_t.c, outbox_t.c
        by_pair = Prepared(select(t.giver_province, t.receiver_province, t.state, func.count(),
                                  func.coalesce(func.sum(t.amount_fen), 0))
                           .group_by(t.giver_province, t.receiver_province, t.state)
                           .order_by(t.giver_province, t.receiver_province, t.state), self._dialect)
        backlog = Prepared(select(func.count(), func.min(o.created_at)).where(o.status == "PENDING"), self._dialect)
        # Every attempt of a message but the one that succeeded failed (a leased one in flight counts too).
        succeeded = func.sum(case((o.status == "DONE", 1), else_=0))
        failures = Prepared(select(o.destination, func.sum(o.attempts) - succeeded)
                            .group_by(o.destination).order_by(o.destination), self._dialect)
        pending = self._cursor.first(backlog)
        return Stats(
            transfers=[PairStateFigure(g, r, TransferState(s), int(c), int(a)) for g, r, s, c, a in
                       self._cursor.all(by_pair)],
            outbox_backlog=int(pending[0]) if pending else 0,
            oldest_undelivered=_aware(pending[1]) if pending else None,
            failed_attempts_by_province={d: int(n or 0) for d, n in self._cursor.all(failures)})

    def add(self, transfer: Transfer, giver_ref: bytes, receiver_ref: bytes, envelope: Envelope) -> bool:
        """Store a new transfer; False (and nothing stored) if its id is taken, e.g. by another province's."""
        inserted = self._cursor.first(
            self._s.insert_transfer,
            transfer_id=transfer.transfer_id, state=transfer.state.value, reason=transfer.reason[:REASON_MAX],
            giver_province=transfer.giver_province, receiver_province=transfer.receiver_province,
            giver_ref=giver_ref, receiver_ref=receiver_ref, giver_id_masked=transfer.giver_id_masked,
            receiver_id_masked=transfer.receiver_id_masked, amount_fen=transfer.amount_fen,
            currency=transfer.currency, binding_id=transfer.binding_id, created_at=transfer.created_at,
            updated_at=transfer.updated_at, return_deadline=transfer.return_deadline,
            delivery_deadline=transfer.delivery_deadline, instruction_sha256=transfer.instruction_sha256,
            instruction_payload=self._sealer.seal(envelope.payload, _instruction_place(transfer.transfer_id)),
            instruction_signer=envelope.signer,
            instruction_key_id=envelope.key_id, instruction_alg=envelope.alg,
            instruction_signature=envelope.signature, settlement_window_id=transfer.settlement_window_id)
        if inserted is None:
            return False
        self.add_event(transfer.transfer_id, transfer.state, transfer.reason, transfer.created_at)
        self._audit.record("transfer", transfer.transfer_id, transfer.state.value, transfer.created_at,
                           f"{transfer.giver_province}->{transfer.receiver_province} amount_fen={transfer.amount_fen} "
                           f"binding={transfer.binding_id} instruction_sha256={transfer.instruction_sha256.hex()}")
        if transfer.binding_id:
            self._cursor.run(self._s.add_used, w_id=transfer.binding_id, amount=transfer.amount_fen)
        return True

    @staticmethod
    def _transfer(v: dict[str, Any], history: tuple[TransferEvent, ...] = ()) -> Transfer:
        return Transfer(
            transfer_id=v["transfer_id"], state=TransferState(v["state"]), giver_province=v["giver_province"],
            receiver_province=v["receiver_province"], giver_id_masked=v["giver_id_masked"],
            receiver_id_masked=v["receiver_id_masked"], amount_fen=v["amount_fen"], currency=v["currency"],
            created_at=v["created_at"], updated_at=v["updated_at"], return_deadline=v["return_deadline"],
            delivery_deadline=v["delivery_deadline"], instruction_sha256=bytes(v["instruction_sha256"]),
            reason=v["reason"], binding_id=v["binding_id"], settlement_window_id=v["settlement_window_id"],
            history=history)

    def suspended_party(self, transfer_id: str) -> str | None:
        row = self._cursor.first(self._s.transfer_suspended_parties, w_id=transfer_id)
        if row is None:
            return None
        return "giver" if row[0] else "receiver" if row[1] else None

    def get(self, transfer_id: str, with_history: bool = False) -> Transfer | None:
        raw = self._cursor.first(self._s.get_transfer, w_id=transfer_id)
        if raw is None:
            return None
        history: tuple[TransferEvent, ...] = ()
        if with_history:
            history = tuple(TransferEvent(TransferState(state), at, reason)
                            for state, at, reason in self._cursor.all(self._s.history, w_id=transfer_id))
        return self._transfer(dict(zip(self._s.get_transfer.columns, raw, strict=True)), history)

    def exists(self, transfer_id: str) -> bool:
        return self._cursor.first(self._s.transfer_exists, w_id=transfer_id) is not None

    def instruction_envelope(self, transfer_id: str) -> Envelope | None:
        raw = self._cursor.first(self._s.instruction, w_id=transfer_id)
        if raw is None:
            return None
        v = dict(zip(self._s.instruction.columns, raw, strict=True))
        payload = self._sealer.open(bytes(v["instruction_payload"]), _instruction_place(transfer_id))
        return Envelope(payload, "gongji.v1.TransferInstruction", v["instruction_signer"], v["instruction_key_id"],
                        v["instruction_alg"], bytes(v["instruction_signature"]))

    def change_state(self, transfer_id: str, from_states: Sequence[TransferState], to: TransferState,
                     reason: str, at: datetime) -> bool:
        """Move the transfer only from one of `from_states`: the guard makes each change happen once."""
        reason = reason[:REASON_MAX]
        for state in from_states:
            if self._cursor.run(self._s.change_state, w_id=transfer_id, w_from=state.value, state=to.value,
                                reason=reason, updated_at=at) == 1:
                self.add_event(transfer_id, to, reason, at)
                self._audit.record("transfer", transfer_id, to.value, at, reason)
                if to in _FAILED and not state.is_final:
                    # A failed transfer no longer counts against its binding's authorised amount (D10),
                    # nor against its giver's transfers of the day (D12).
                    row = self._cursor.first(self._s.transfer_counted_in, w_id=transfer_id)
                    if row is not None:
                        binding_id, amount, giver_ref, created_at = row
                        if binding_id:
                            self._cursor.run(self._s.add_used, w_id=binding_id, amount=-int(amount))
                        self.release_daily_slot(bytes(giver_ref), beijing_day(created_at))
                return True
        return False

    def add_event(self, transfer_id: str, state: TransferState, reason: str, at: datetime) -> None:
        self._cursor.run(self._s.insert_event, transfer_id=transfer_id, state=state.value, reason=reason[:REASON_MAX],
                         at=at)

    def due_for_return(self, now: datetime, limit: int) -> list[str]:
        return [row[0] for row in self._cursor.all(self._s.due_for_return, now=now, limit=limit)]

    def assign_window(self, transfer_id: str, window_id: str) -> None:
        self._cursor.run(self._s.assign_window, w_id=transfer_id, window_id=window_id)

    def reserve_daily_slot(self, giver_ref: bytes, day: date) -> int:
        """Count one more transfer of the giver on `day`; returns how many there were before it (D12)."""
        row = self._cursor.first(self._s.reserve_daily_slot, ref=giver_ref, day=day)
        assert row is not None
        return int(row[0]) - 1

    def release_daily_slot(self, giver_ref: bytes, day: date) -> None:
        self._cursor.run(self._s.release_daily_slot, ref=giver_ref, day=day)

    def undelivered_past_deadline(self, now: datetime, limit: int) -> list[str]:
        return [row[0] for row in self._cursor.all(self._s.undelivered, now=now, limit=limit)]


class SqlBindingRepository:
    def __init__(self, cursor: Cursor, store: SqlStore, audit: SqlAuditLog) -> None:
        self._cursor, self._s, self._audit = cursor, store.statements, audit
        self._sealer = store.sealer

    def lock_people(self, *person_refs: bytes) -> None:
        # In one order, so two transactions locking the same two people never wait on each other.
        if self._s.lock_person is not None:
            for ref in sorted(set(person_refs)):
                self._cursor.first(self._s.lock_person, key=int.from_bytes(ref[:8], "big", signed=True))

    def add(self, binding: Binding, envelope: Envelope) -> bool:
        """Store a new binding; False (and nothing stored) if its id is taken, e.g. by another province's."""
        inserted = self._cursor.first(
            self._s.insert_binding, binding_id=binding.binding_id, state=binding.state.value,
            reason=binding.reason[:REASON_MAX], giver_province=binding.giver_province,
            receiver_province=binding.receiver_province, giver_ref=binding.giver_ref,
            receiver_ref=binding.receiver_ref, giver_id_masked=binding.giver_id_masked,
            receiver_id_masked=binding.receiver_id_masked, relation_code=binding.relation_code,
            authorised_amount_fen=binding.authorised_amount_fen, used_amount_fen=0,
            consent_by=binding.consent_by, created_at=binding.created_at, updated_at=binding.updated_at,
            attestation_method="", evidence_ref="", attested_at=None, proposal_sha256=binding.proposal_sha256,
            proposal_payload=self._sealer.seal(envelope.payload, _proposal_place(binding.binding_id)),
            proposal_signer=envelope.signer, proposal_key_id=envelope.key_id,
            proposal_alg=envelope.alg, proposal_signature=envelope.signature)
        if inserted is None:
            return False
        self._audit.record("binding", binding.binding_id, binding.state.value, binding.created_at,
                           f"{binding.giver_province}->{binding.receiver_province} relation={binding.relation_code} "
                           f"authorised_fen={binding.authorised_amount_fen} "
                           f"proposal_sha256={binding.proposal_sha256.hex()}")
        return True

    def _binding(self, raw: Sequence[Any]) -> Binding:
        v = dict(zip(self._s.get_binding.columns, raw, strict=True))
        return Binding(
            binding_id=v["binding_id"], state=BindingState(v["state"]), giver_province=v["giver_province"],
            receiver_province=v["receiver_province"], giver_id_masked=v["giver_id_masked"],
            receiver_id_masked=v["receiver_id_masked"], relation_code=v["relation_code"],
            authorised_amount_fen=v["authorised_amount_fen"],
            consent_by=v["consent_by"], created_at=v["created_at"], updated_at=v["updated_at"],
            proposal_sha256=bytes(v["proposal_sha256"]), reason=v["reason"],
            attestation_method=AttestationMethod(v["attestation_method"]) if v["attestation_method"] else None,
            evidence_ref=v["evidence_ref"], attested_at=v["attested_at"], used_amount_fen=v["used_amount_fen"],
            giver_ref=bytes(v["giver_ref"]),
            receiver_ref=bytes(v["receiver_ref"]))

    def get(self, binding_id: str, lock: bool = False) -> Binding | None:
        """The binding; with `lock`, no other transaction changes it until this one ends."""
        raw = self._cursor.first(self._s.lock_binding if lock else self._s.get_binding, w_id=binding_id)
        return None if raw is None else self._binding(raw)

    def exists(self, binding_id: str) -> bool:
        return self._cursor.first(self._s.binding_exists, w_id=binding_id) is not None

    def proposal_envelope(self, binding_id: str) -> Envelope | None:
        raw = self._cursor.first(self._s.proposal, w_id=binding_id)
        if raw is None:
            return None
        sealed, signer, key_id, alg, signature = raw
        payload = self._sealer.open(bytes(sealed), _proposal_place(binding_id))
        return Envelope(payload, "gongji.v1.BindingProposal", signer, key_id, alg, bytes(signature))

    def change_state(self, binding_id: str, from_states: Sequence[BindingState], to: BindingState, reason: str,
                     at: datetime) -> bool:
        for state in from_states:
            if self._cursor.run(self._s.change_binding_state, w_id=binding_id, w_from=state.value, state=to.value,
                                reason=reason[:REASON_MAX], updated_at=at) == 1:
                self._audit.record("binding", binding_id, to.value, at, reason[:REASON_MAX])
                return True
        return False

    def record_attestation(self, binding_id: str, attestation: Attestation) -> None:
        self._cursor.run(self._s.attest_binding, w_id=binding_id, attestation_method=attestation.method.value,
                         evidence_ref=attestation.evidence_ref[:128], attested_at=attestation.attested_at)
        self._audit.record("binding", binding_id, "ATTESTED", attestation.attested_at,
                           f"method={attestation.method.value} evidence_ref={attestation.evidence_ref[:128]}")

    def of_person(self, person_ref: bytes) -> list[Binding]:
        return [self._binding(raw) for raw in self._cursor.all(self._s.bindings_of_person, ref=person_ref)]

    def expired_proposals(self, now: datetime, limit: int) -> list[str]:
        return [row[0] for row in self._cursor.all(self._s.expired_proposals, now=now, limit=limit)]





class SqlMemberRepository:
    """Settlement suspensions (D3) by keyed hash of the person."""

    def __init__(self, cursor: Cursor, store: SqlStore) -> None:
        self._cursor, self._s = cursor, store.statements

    def suspend(self, person_ref: bytes, province: str, at: datetime) -> None:
        self._cursor.run(self._s.suspend_member, person_ref=person_ref, province=province, since=at)

    def resume(self, person_ref: bytes, province: str) -> None:
        self._cursor.run(self._s.resume_member, ref=person_ref, province=province)

    def is_suspended(self, person_ref: bytes, province: str) -> bool:
        return self._cursor.first(self._s.member_suspended, ref=person_ref, province=province) is not None


class SqlRelationQueryLog:
    """The record of VerifyRelation queries: one insert each, nothing read back on a call's path."""

    def __init__(self, cursor: Cursor, store: SqlStore) -> None:
        self._cursor, self._s = cursor, store.statements

    def record(self, entry: RelationQueryRecord) -> None:
        self._cursor.run(self._s.insert_relation_query, asked_at=entry.asked_at, asking_province=entry.asking_province,
                         receiver_province=entry.receiver_province, message_id=entry.message_id,
                         giver_id_masked=entry.giver_id_masked, receiver_id_masked=entry.receiver_id_masked,
                         relation_code=entry.relation_code, answer=entry.answer.value)


class SqlOutboxRepository:
    def __init__(self, cursor: Cursor, store: SqlStore) -> None:
        self._cursor, self._s = cursor, store.statements

    def enqueue(self, destination: str, kind: OutboxKind, message_id: str, subject_id: str, at: datetime,
                lease_until: datetime | None = None) -> OutboxMessage | None:
        # The unique (destination, message_id) key makes a second enqueue of the same message a no-op.
        if lease_until is None:
            self._cursor.run(self._s.enqueue, destination=destination, kind=kind.value, message_id=message_id,
                             subject_id=subject_id, at=at)
            return None
        row = self._cursor.first(self._s.enqueue_leased, destination=destination, kind=kind.value,
                                 message_id=message_id, subject_id=subject_id, at=at, lease_until=lease_until)
        return None if row is None else OutboxMessage(row[0], destination, kind, message_id, subject_id, 1, at)

    def release(self, message_ids: Sequence[int], now: datetime) -> None:
        self._cursor.run_many(self._s.release_lease, [{"w_id": id, "now": now} for id in message_ids])

    def claim_due(self, now: datetime, limit: int, lease_until: datetime) -> list[OutboxMessage]:
        """Take due messages and lease them, so a crash mid-send only delays their retry."""
        rows = self._cursor.all(self._s.claim_due, now=now, limit=limit)
        self._cursor.run_many(self._s.lease, [{"w_id": row[0], "lease_until": lease_until} for row in rows])
        return [OutboxMessage(id, destination, OutboxKind(kind), message_id, subject_id, attempts + 1, created_at)
                for id, destination, kind, message_id, subject_id, attempts, created_at in rows]

    def mark_done(self, message_id: int, at: datetime) -> None:
        self._cursor.run(self._s.mark_done, w_id=message_id, at=at)

    def mark_retry(self, message_id: int, next_attempt_at: datetime, error: str) -> None:
        self._cursor.run(self._s.mark_retry, w_id=message_id, next_attempt_at=next_attempt_at, error=error[:128])

    def expire_pending(self, kind: OutboxKind, subject_id: str, at: datetime, error: str) -> None:
        self._cursor.run(self._s.expire_pending, w_kind=kind.value, w_subject=subject_id, at=at, error=error[:128])


class SqlSettlementRepository:
    """Settlement windows, their frozen figures, the provinces' statements and acknowledgements."""

    def __init__(self, cursor: Cursor, store: SqlStore, audit: SqlAuditLog) -> None:
        self._cursor, self._s, self._dialect, self._audit = cursor, store.statements, store.engine.dialect, audit

    def _prepared(self, statement: ClauseElement) -> Prepared:
        # Settlement statements run a few times a day: compiled per call, run like every other statement.
        return Prepared(statement, self._dialect)

    def _ensure(self, span: WindowSpan, at: datetime) -> None:
        self._cursor.run(self._s.ensure_window, window_id=span.window_id, opens_at=span.opens_at,
                         closes_at=span.closes_at, at=at)

    def state_for_commit(self, span: WindowSpan, at: datetime) -> WindowState:
        """The window's state, creating it OPEN if new, locked against closing until this transaction ends."""
        row = self._cursor.first(self._s.window_state_for_commit, w_id=span.window_id)
        if row is None:
            self._ensure(span, at)
            row = self._cursor.first(self._s.window_state_for_commit, w_id=span.window_id)
        assert row is not None
        return WindowState(row[0])

    def state_for_close(self, span: WindowSpan, at: datetime) -> WindowState:
        """The window's state, creating it OPEN if new, locked until this transaction ends."""
        self._ensure(span, at)
        state = self.lock(span.window_id)
        assert state is not None
        return state

    def lock(self, window_id: str) -> WindowState | None:
        """The window's state, locked against every other change until this transaction ends."""
        row = self._cursor.first(self._s.window_state_for_close, w_id=window_id)
        return None if row is None else WindowState(row[0])

    def committed_pairs(self, window_id: str) -> list[PairFigure]:
        t = transfers_t.c
        statement = self._prepared(
            select(t.giver_province, t.receiver_province, func.sum(t.amount_fen), func.count())
            .where(and_(t.settlement_window_id == window_id, t.state == TransferState.COMMITTED.value))
            .group_by(t.giver_province, t.receiver_province).order_by(t.giver_province, t.receiver_province))
        return [PairFigure(g, r, int(total), int(count)) for g, r, total, count in self._cursor.all(statement)]

    def freeze(self, window_id: str, pairs: Sequence[PairFigure],
               statements: Sequence[tuple[str, Envelope, bytes]], at: datetime) -> None:
        """Store the figures and each province's signed statement, and mark the window CLOSED."""
        self._cursor.run_many(self._prepared(pairs_t.insert()), [
            {"window_id": window_id, "from_province": p.from_province, "to_province": p.to_province,
             "gross_fen": p.gross_fen, "transfer_count": p.transfer_count, "bank": "", "serial_number": "",
             "paid_on": None, "paid_recorded_at": None} for p in pairs])
        self._cursor.run_many(self._prepared(statements_t.insert()), [
            {"window_id": window_id, "province": province, "figures_payload": envelope.payload,
             "figures_key_id": envelope.key_id, "figures_alg": envelope.alg, "figures_signature": envelope.signature,
             "figures_sha256": digest, "acknowledged_at": None, "ack_message_id": "", "ack_payload": None,
             "ack_key_id": "", "ack_signature": None} for province, envelope, digest in statements])
        figures = [f"{p.from_province}->{p.to_province}:{p.gross_fen}:{p.transfer_count}" for p in pairs]
        sent = [f"{province}:{digest.hex()}" for province, _, digest in statements]
        changed = self.change_state(window_id, WindowState.OPEN, WindowState.CLOSED, at, closed=True,
                                    detail=" ".join(figures + sent))
        assert changed, "the window was locked OPEN by this transaction"

    def change_state(self, window_id: str, from_state: WindowState, to: WindowState, at: datetime,
                     closed: bool = False, detail: str = "") -> bool:
        w = windows_t.c
        values: dict[str, Any] = {"state": to.value, "updated_at": at}
        if closed:
            values["closed_at"] = at
        statement = self._prepared(update(windows_t).where(and_(w.window_id == window_id,
                                                                w.state == from_state.value)).values(**values))
        if self._cursor.run(statement) != 1:
            return False
        self._audit.record("settlement", window_id, to.value, at, detail)
        return True

    def get(self, window_id: str) -> SettlementWindow | None:
        w, pr, st = windows_t.c, pairs_t.c, statements_t.c
        row = self._cursor.first(self._prepared(
            select(w.window_id, w.state, w.opens_at, w.closes_at, w.closed_at).where(w.window_id == window_id)))
        if row is None:
            return None
        pairs, payments = [], []
        for fr, to, gross, count, bank, serial, paid_on in self._cursor.all(self._prepared(
                select(pr.from_province, pr.to_province, pr.gross_fen, pr.transfer_count, pr.bank, pr.serial_number,
                       pr.paid_on).where(pr.window_id == window_id).order_by(pr.from_province, pr.to_province))):
            pairs.append(PairFigure(fr, to, int(gross), int(count)))
            if paid_on is not None:
                payments.append(Payment(fr, to, bank, serial, paid_on))
        acks = tuple(Acknowledgement(province, at) for province, at in self._cursor.all(self._prepared(
            select(st.province, st.acknowledged_at).where(and_(st.window_id == window_id,
                                                                st.acknowledged_at.is_not(None)))
            .order_by(st.province))))
        return SettlementWindow(row[0], WindowState(row[1]), row[2], row[3], row[4], tuple(pairs), acks,
                                tuple(payments))

    def newest_first(self, states: Sequence[WindowState], before: str | None, limit: int) -> list[SettlementWindow]:
        """Windows newest first (by window id), `before` excluded."""
        w = windows_t.c
        query = select(w.window_id)
        if states:
            query = query.where(or_(*(w.state == state.value for state in states)))
        if before is not None:
            query = query.where(w.window_id < before)
        ids = [r[0] for r in self._cursor.all(self._prepared(query.order_by(w.window_id.desc()).limit(limit)))]
        return [window for window_id in ids if (window := self.get(window_id)) is not None]

    def due_for_close(self, closes_before: datetime, limit: int) -> list[str]:
        w = windows_t.c
        statement = self._prepared(select(w.window_id).where(and_(w.state == WindowState.OPEN.value,
                                                                  w.closes_at <= closes_before))
                                   .order_by(w.closes_at).limit(limit))
        return [row[0] for row in self._cursor.all(statement)]

    def statement(self, window_id: str, province: str) -> tuple[Envelope, bytes] | None:
        """The gateway-signed figures sent to `province`, with their digest."""
        st = statements_t.c
        row = self._cursor.first(self._prepared(
            select(st.figures_payload, st.figures_key_id, st.figures_alg, st.figures_signature, st.figures_sha256)
            .where(and_(st.window_id == window_id, st.province == province))))
        if row is None:
            return None
        payload, key_id, alg, signature, digest = row
        return Envelope(bytes(payload), FIGURES_TYPE, "gateway", key_id, alg, bytes(signature)), bytes(digest)

    def latest_statement_window(self, province: str) -> str | None:
        st = statements_t.c
        row = self._cursor.first(self._prepared(select(st.window_id).where(st.province == province)
                                                .order_by(st.window_id.desc()).limit(1)))
        return None if row is None else str(row[0])

    def acknowledge(self, window_id: str, province: str, at: datetime, message_id: str, envelope: Envelope) -> bool:
        """Record the province's signed agreement once; False if it had already agreed."""
        st = statements_t.c
        statement = self._prepared(update(statements_t).where(and_(
            st.window_id == window_id, st.province == province, st.acknowledged_at.is_(None))).values(
            acknowledged_at=at, ack_message_id=message_id, ack_payload=envelope.payload, ack_key_id=envelope.key_id,
            ack_signature=envelope.signature))
        if self._cursor.run(statement) != 1:
            return False
        self._audit.record("settlement", window_id, "AGREED", at,
                           f"{province} message_id={message_id} signature={envelope.signature.hex()}")
        return True

    def unacknowledged(self, window_id: str) -> int:
        st = statements_t.c
        row = self._cursor.first(self._prepared(select(func.count()).select_from(statements_t).where(
            and_(st.window_id == window_id, st.acknowledged_at.is_(None)))))
        return int(row[0]) if row else 0

    def record_payment(self, window_id: str, payment: Payment, at: datetime) -> None:
        pr = pairs_t.c
        self._cursor.run(self._prepared(update(pairs_t).where(and_(
            pr.window_id == window_id, pr.from_province == payment.from_province,
            pr.to_province == payment.to_province, pr.paid_on.is_(None))).values(
            bank=payment.bank, serial_number=payment.serial_number, paid_on=payment.paid_on, paid_recorded_at=at)))
        self._audit.record("settlement", window_id, "PAID", at,
                           f"{payment.from_province}->{payment.to_province} bank={payment.bank} "
                           f"serial={payment.serial_number} date={payment.paid_on.isoformat()}")

    def counts_by_state(self) -> dict[WindowState, int]:
        w = windows_t.c
        rows = self._cursor.all(self._prepared(select(w.state, func.count()).group_by(w.state)))
        return {WindowState(state): int(count) for state, count in rows}


class SqlAuditLog:
    """The tamper-evident record: events gathered during the unit of work, chained and written at commit."""

    def __init__(self, cursor: Cursor, store: SqlStore) -> None:
        self._cursor, self._s = cursor, store.statements
        self._pending: list[AuditEvent] = []
        self._actor = ""

    def act_as(self, actor: str) -> None:
        self._actor = actor

    def record(self, kind: str, subject_id: str, action: str, at: datetime, detail: str = "") -> None:
        if self._actor:
            detail = f"{detail} by={self._actor}" if detail else f"by={self._actor}"
        self._pending.append(AuditEvent(kind, subject_id, action, at, detail))

    def flush(self) -> None:
        """Chain what this transaction did onto the head (locked until commit) and write it."""
        if not self._pending:
            return
        row = self._cursor.first(self._s.audit_head_for_append)
        assert row is not None, "the schema makes the head row (migration 0002)"
        size, head = int(row[0]), bytes(row[1])
        rows = []
        for pending in self._pending:
            size += 1
            entry = chain(head, size, pending)
            head = entry.entry_hash
            rows.append({"seq": entry.seq, "at": entry.at, "kind": entry.kind, "subject_id": entry.subject_id,
                         "action": entry.action, "detail": entry.detail, "prev_hash": entry.prev_hash,
                         "entry_hash": entry.entry_hash})
        self._cursor.run_many(self._s.insert_audit, rows)
        self._cursor.run(self._s.move_audit_head, size=size, head_hash=head)
        self._pending.clear()

    def head(self) -> tuple[int, bytes]:
        row = self._cursor.first(self._s.audit_head)
        return (0, GENESIS) if row is None else (int(row[0]), bytes(row[1]))

    def entries_after(self, seq: int, limit: int) -> list[AuditEntry]:
        return [AuditEntry(int(n), kind, subject, action, at, detail, bytes(prev), bytes(entry))
                for n, kind, subject, action, at, detail, prev, entry in
                self._cursor.all(self._s.audit_entries, after=seq, limit=limit)]

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._cursor.run(self._s.insert_checkpoint, size=checkpoint.size, head_hash=checkpoint.head, at=checkpoint.at,
                         payload=checkpoint.payload, key_id=checkpoint.key_id, signature=checkpoint.signature)

    def checkpoints(self) -> list[Checkpoint]:
        return [Checkpoint(int(size), bytes(head), at, bytes(payload), key_id, bytes(signature))
                for size, head, at, payload, key_id, signature in self._cursor.all(self._s.checkpoints)]

    def last_checkpoint_size(self) -> int:
        row = self._cursor.first(self._s.last_checkpoint)
        return int(row[0]) if row and row[0] is not None else 0


class SqlGatewayKeyRepository:
    """The gateway's own public keys (rarely read or written: statements compiled per call)."""

    def __init__(self, cursor: Cursor, store: SqlStore, audit: SqlAuditLog) -> None:
        self._cursor, self._dialect, self._audit, self._s = cursor, store.engine.dialect, audit, store.statements

    def lock(self) -> None:
        """Until the transaction ends, no other transaction changes the gateway's keys. SQLite needs no lock:
        its transactions take the write lock when they begin."""
        if self._s.lock_gateway_keys is not None:
            self._cursor.run(self._s.lock_gateway_keys)

    def list(self) -> list[ProvinceKey]:
        g = gateway_keys_t.c
        statement = Prepared(select(g.key_id, g.public_key, g.valid_from, g.valid_until)
                             .order_by(g.valid_from.desc(), g.key_id), self._dialect)
        return [ProvinceKey(key_id, bytes(public_key), "ed25519", valid_from, valid_until)
                for key_id, public_key, valid_from, valid_until in self._cursor.all(statement)]

    def add(self, key: ProvinceKey, at: datetime) -> None:
        self._cursor.run(Prepared(gateway_keys_t.insert(), self._dialect), key_id=key.key_id,
                         public_key=key.public_key, valid_from=key.valid_from, valid_until=key.valid_until)
        self._audit.record("gateway", key.key_id, "KEY_ADDED", at, f"public_key={key.public_key.hex()}")

    def retire(self, key_id: str, until: datetime, at: datetime) -> None:
        g = gateway_keys_t.c
        self._cursor.run(Prepared(update(gateway_keys_t).where(g.key_id == key_id).values(valid_until=until),
                                  self._dialect))
        self._audit.record("gateway", key_id, "KEY_RETIRING", at, f"valid_until={until.isoformat()}")


class SqlUnitOfWork:
    """One database transaction; leaving the block without commit() rolls it back."""

    def __init__(self, engine: Engine, read_only: bool = False) -> None:
        self._store = store_for(engine)
        # A long read (verifying the whole audit chain) takes one consistent snapshot and no write lock.
        self._read_only = read_only

    def __enter__(self) -> SqlUnitOfWork:
        self._connection = self._store.engine.raw_connection()
        self._cursor = Cursor(self._connection.driver_connection)
        self._open = True
        if self._store.is_sqlite:
            self._cursor.raw("BEGIN" if self._read_only else "BEGIN IMMEDIATE")
        elif self._read_only:
            self._cursor.raw("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self.audit = SqlAuditLog(self._cursor, self._store)
        self.provinces = SqlProvinceRepository(self._cursor, self._store, self.audit)
        self.requests = SqlRequestRepository(self._cursor, self._store)
        self.transfers = SqlTransferRepository(self._cursor, self._store, self.audit)
        self.outbox = SqlOutboxRepository(self._cursor, self._store)
        self.bindings = SqlBindingRepository(self._cursor, self._store, self.audit)
        self.members = SqlMemberRepository(self._cursor, self._store)
        self.settlements = SqlSettlementRepository(self._cursor, self._store, self.audit)
        self.gateway_keys = SqlGatewayKeyRepository(self._cursor, self._store, self.audit)
        self.relation_queries = SqlRelationQueryLog(self._cursor, self._store)
        self._after_commit: list[Callable[[], None]] = []
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._open:
                self._end("ROLLBACK")
        finally:
            self._cursor.close()
            self._connection.close()  # back to the pool

    def _end(self, verb: str) -> None:
        self._open = False
        if self._store.is_sqlite:
            self._cursor.raw(verb)
        elif verb == "COMMIT":
            with contention():
                self._connection.commit()
        else:
            self._connection.rollback()

    def commit(self) -> None:
        self.audit.flush()
        self._end("COMMIT")
        actions, self._after_commit = self._after_commit, []
        for action in actions:
            try:
                action()
            except Exception:  # committed all the same: the caller must hear so, not an error
                log.exception("an action after a commit failed")

    def after_commit(self, action: Callable[[], None]) -> None:
        self._after_commit.append(action)
