"""Every statement the repositories run on the hot path, built from the typed tables and compiled once per engine."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Engine,
    LargeBinary,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import ClauseElement

from gateway.domain.audit import GENESIS
from gateway.domain.settlement import WindowState
from gateway.domain.transfers import TransferState
from gateway.store.prepared import Prepared
from gateway.store.repositories.quotas import QuotaStatements
from gateway.store.repositories.settlements import SettlementStatements
from gateway.store.repositories.totals import TotalStatements
from gateway.store.tables import (
    audit_head_t,
    audit_t,
    bindings_t,
    checkpoints_t,
    events_t,
    giver_days_t,
    keys_t,
    outbox_t,
    provinces_t,
    relation_queries_t,
    requests_t,
    routing_version_t,
    suspensions_t,
    transfers_t,
    windows_t,
)


def _suspended_in(person_ref: Any, province: Any) -> Any:
    """The suspension a province reported for a person (D3), which binds them only as its member (D20)."""
    return and_(suspensions_t.c.person_ref == person_ref, suspensions_t.c.province == province)


def _b(name: str) -> Any:
    return bindparam(name)


def _on_the_row(column: Any) -> Any:
    """A state or status compared on the row its key found, never used to choose an index. PostgreSQL plans a
    statement with its values: asked for `transfer_id = … AND state = 'RECEIVED'`, with few transfers RECEIVED in
    its statistics, it reads the whole RECEIVED range of a (state, …) index instead of the key's one entry, and a
    change then costs as much as the transfers in flight and the versions autovacuum has not yet removed.
    COALESCE of a NOT NULL column changes no answer and matches no index.
    tests/store/test_key_lookups.py checks each such statement's plan."""
    return func.coalesce(column, "")


# A transfer without its sealed instruction, and the instruction alone (read only to send it).
TRANSFER_VIEW = [c for c in transfers_t.c if not c.name.startswith("instruction_") or c.name == "instruction_sha256"]
INSTRUCTION = [transfers_t.c.instruction_payload, transfers_t.c.instruction_signer, transfers_t.c.instruction_key_id,
               transfers_t.c.instruction_alg, transfers_t.c.instruction_signature]

# Likewise a binding and its sealed proposal.
BINDING_VIEW = [c for c in bindings_t.c if not c.name.startswith("proposal_") or c.name == "proposal_sha256"]
PROPOSAL = [bindings_t.c.proposal_payload, bindings_t.c.proposal_signer, bindings_t.c.proposal_key_id,
            bindings_t.c.proposal_alg, bindings_t.c.proposal_signature]


class DatabaseChaining(NamedTuple):
    """PostgreSQL's two statements that append one audit entry, run in this order."""

    move_head: Prepared  # the head moved by one entry, hashed from the entry's canonical bytes after its position
    write_entry: Prepared  # the entry written from the moved head and the entry before it


def _database_chaining(p: Callable[[ClauseElement], Prepared]) -> DatabaseChaining:
    """PostgreSQL chains each entry itself, so no answer has to come back before the COMMIT and the head is held for
    no round trip to the gateway (repositories/audit.py). The head's hash is gateway.domain.audit.chain's:
    sha256(head || '[' || position || tail), the gateway sending the tail (canonical_tail). READ COMMITTED: the
    INSERT, a statement after the UPDATE that waited for the head, sees what the transaction it waited for wrote."""
    a, h = audit_t.c, audit_head_t.c
    entry_bytes = (func.convert_to(literal_column("'['") + cast(h.size + 1, Text), literal_column("'UTF8'"))
                   .op("||", return_type=LargeBinary)(bindparam("tail", type_=LargeBinary)))
    before = audit_t.alias("before")
    return DatabaseChaining(
        move_head=p(update(audit_head_t).where(h.id == 1).values(
            size=h.size + 1, head_hash=func.sha256(h.head_hash.op("||", return_type=LargeBinary)(entry_bytes)))),
        write_entry=p(audit_t.insert().from_select(
            ["seq", "at", "kind", "subject_id", "action", "detail", "prev_hash", "entry_hash"],
            select(h.size, bindparam("at", type_=a.at.type), bindparam("kind", type_=a.kind.type),
                   bindparam("subject_id", type_=a.subject_id.type), bindparam("action", type_=a.action.type),
                   bindparam("detail", type_=a.detail.type),
                   case((h.size == 1, literal(GENESIS, LargeBinary)),
                        else_=select(before.c.entry_hash).where(before.c.seq == h.size - 1).scalar_subquery()),
                   h.head_hash).where(h.id == 1))))


class Statements:
    """Every statement the repositories run, compiled for one dialect."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert

        def p(statement: ClauseElement) -> Prepared:
            return Prepared(statement, dialect)

        t, o, r = transfers_t.c, outbox_t.c, requests_t.c
        self.totals = TotalStatements(dialect, insert)
        self.quotas = QuotaStatements(dialect, insert)
        self.settlements = SettlementStatements(dialect)
        routing_version = select(routing_version_t.c.version).where(routing_version_t.c.id == 1)
        self.routing_version = p(routing_version)
        # The same, its values written in: it goes in a simple query beside a BEGIN (unit_of_work.py).
        self.routing_version_sql = str(routing_version.compile(dialect=dialect,
                                                               compile_kwargs={"literal_binds": True}))
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
        self.get_transfer = p(select(*TRANSFER_VIEW).where(t.transfer_id == _b("w_id")))
        e = events_t.c
        change = (select(e.id, e.transfer_id, e.state, e.at, e.reason, t.giver_province, t.receiver_province,
                         t.amount_fen).join_from(events_t, transfers_t, e.transfer_id == t.transfer_id))
        self.changes_after = p(change.where(e.id > _b("after")).order_by(e.id).limit(_b("limit")))
        self.newest_changes = p(change.order_by(e.id.desc()).limit(_b("limit")))
        self.last_change = p(select(func.max(e.id)))
        # PostgreSQL numbers a change before it commits; a watcher passes a missing number once every writing
        # transaction of this database that had begun when it saw the gap has ended (other databases on the
        # cluster do not hold it up). SQLite needs neither: its one writer at a time commits in number order.
        postgres = dialect.name == "postgresql"
        self.database_now: Prepared | None = p(text("SELECT clock_timestamp()")) if postgres else None
        self.writers_begun_by: Prepared | None = (
            p(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                   "AND backend_xid IS NOT NULL AND xact_start <= :since")) if postgres else None)
        self.transfer_giver_ref = p(select(t.giver_ref).where(t.transfer_id == _b("w_id")))
        self.transfer_exists = p(select(t.transfer_id).where(t.transfer_id == _b("w_id")))
        self.transfer_suspended_parties = p(
            select(*(select(suspensions_t.c.person_ref).where(_suspended_in(ref, province)).exists()
                     for ref, province in ((t.giver_ref, t.giver_province), (t.receiver_ref, t.receiver_province))))
            .where(t.transfer_id == _b("w_id")))
        self.history = p(select(events_t.c.state, events_t.c.at, events_t.c.reason)
                         .where(events_t.c.transfer_id == _b("w_id")).order_by(events_t.c.id))
        self.instruction = p(select(*INSTRUCTION).where(t.transfer_id == _b("w_id")))
        # What moved is returned for the running totals (repositories/totals.py).
        self.change_state = p(update(transfers_t)
                              .where(and_(t.transfer_id == _b("w_id"), _on_the_row(t.state) == _b("w_from")))
                              .values(state=_b("state"), reason=_b("reason"), updated_at=_b("updated_at"))
                              .returning(t.giver_province, t.receiver_province, t.amount_fen))
        self.due_for_return = p(select(t.transfer_id).where(and_(t.state == TransferState.DELIVERED.value,
                                                                 t.return_deadline <= _b("now")))
                                .order_by(t.return_deadline).limit(_b("limit")))
        self.undelivered = p(select(t.transfer_id).where(and_(t.state == TransferState.RECEIVED.value,
                                                              t.delivery_deadline <= _b("now")))
                             .order_by(t.delivery_deadline).limit(_b("limit")))

        b = bindings_t.c
        self.insert_binding = p(insert(bindings_t).on_conflict_do_nothing().returning(bindings_t.c.binding_id))
        self.get_binding = p(select(*BINDING_VIEW).where(b.binding_id == _b("w_id")))
        # SQLite renders no FOR UPDATE (its writers are one at a time anyway).
        self.lock_binding = p(select(*BINDING_VIEW).where(b.binding_id == _b("w_id")).with_for_update())
        self.binding_exists = p(select(b.binding_id).where(b.binding_id == _b("w_id")))
        self.proposal = p(select(*PROPOSAL).where(b.binding_id == _b("w_id")))
        self.change_binding_state = p(update(bindings_t).where(and_(b.binding_id == _b("w_id"),
                                                                    _on_the_row(b.state) == _b("w_from")))
                                      .values(state=_b("state"), reason=_b("reason"), updated_at=_b("updated_at")))
        self.attest_binding = p(update(bindings_t).where(b.binding_id == _b("w_id")).values(
            attestation_method=_b("attestation_method"), evidence_ref=_b("evidence_ref"),
            attested_at=_b("attested_at")))
        self.bindings_of_person = p(select(*BINDING_VIEW).where(
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
        # Both parties of a transfer, binding or draw in one statement (one round trip, not one a person).
        self.parties_suspended = p(select(*(select(suspensions_t.c.person_ref).where(_suspended_in(ref, province))
                                            .exists() for ref, province in ((_b("giver_ref"), _b("giver_province")),
                                                                            (_b("receiver_ref"),
                                                                             _b("receiver_province"))))))

        w = windows_t.c
        self.ensure_window = p(insert(windows_t).on_conflict_do_nothing().values(
            window_id=_b("window_id"), state=WindowState.OPEN.value, opens_at=_b("opens_at"),
            closes_at=_b("closes_at"), updated_at=_b("at")))
        # Shared by every commit into the window, exclusive for closing it: a commit and a close are
        # ordered, so a transfer lands in exactly one window's figures (D16).
        self.window_state_for_commit = p(select(w.state).where(w.window_id == _b("w_id")).with_for_update(read=True))
        self.window_state_for_close = p(select(w.state).where(w.window_id == _b("w_id")).with_for_update())
        self.assign_window = p(update(transfers_t).where(t.transfer_id == _b("w_id"))
                               .values(settlement_window_id=_b("window_id"))
                               .returning(t.giver_province, t.receiver_province, t.amount_fen))

        a, h = audit_t.c, audit_head_t.c
        # Locked for the last moments of each appending transaction: entries are chained in commit order.
        self.audit_head_for_append = p(select(h.size, h.head_hash).where(h.id == 1).with_for_update())
        self.audit_head = p(select(h.size, h.head_hash).where(h.id == 1))
        self.move_audit_head = p(update(audit_head_t).where(h.id == 1).values(size=_b("size"),
                                                                               head_hash=_b("head_hash")))
        self.insert_audit = p(audit_t.insert())
        self.chain_audit_in_database = _database_chaining(p) if postgres else None
        c = checkpoints_t.c
        self.insert_checkpoint = p(insert(checkpoints_t).on_conflict_do_nothing())
        self.checkpoints = p(select(c.size, c.head_hash, c.at, c.payload, c.key_id, c.signature).order_by(c.size))
        self.last_checkpoint = p(select(func.max(c.size)))
        self.audit_entries = p(select(a.seq, a.kind, a.subject_id, a.action, a.at, a.detail, a.prev_hash, a.entry_hash)
                               .where(a.seq > _b("after")).order_by(a.seq).limit(_b("limit")))

        def queued(attempts: int, due: Any) -> Any:
            return insert(outbox_t).on_conflict_do_nothing().values(
                destination=_b("destination"), kind=_b("kind"), message_id=_b("message_id"),
                subject_id=_b("subject_id"), state=_b("state"), reason=_b("reason"), status="PENDING",
                attempts=attempts, next_attempt_at=due, last_error="", created_at=_b("at"))

        self.insert_relation_query = p(insert(relation_queries_t).values(
            asked_at=_b("asked_at"), asking_province=_b("asking_province"), receiver_province=_b("receiver_province"),
            message_id=_b("message_id"), giver_id_masked=_b("giver_id_masked"),
            receiver_id_masked=_b("receiver_id_masked"), relation_code=_b("relation_code"), answer=_b("answer")))
        self.enqueue = p(queued(0, _b("at")).returning(o.id))
        # Written as a claim would leave it: its first attempt counted, due again when the lease ends.
        self.enqueue_leased = p(queued(1, _b("lease_until")).returning(o.id))
        self.release_lease = p(update(outbox_t).where(and_(o.id == _b("w_id"), _on_the_row(o.status) == "PENDING"))
                               .values(next_attempt_at=_b("now"), attempts=o.attempts - 1)
                               .returning(o.destination, o.message_id))
        self._dialect = dialect
        self.claim_due = self.claim_due_except(())
        self.lease = p(update(outbox_t).where(o.id == _b("w_id"))
                       .values(next_attempt_at=_b("lease_until"), attempts=o.attempts + 1))
        self.mark_done = p(update(outbox_t).where(and_(o.id == _b("w_id"), _on_the_row(o.status) == "PENDING"))
                           .values(status="DONE", done_at=_b("at"), last_error="")
                           .returning(o.destination, o.message_id))
        self.mark_retry = p(update(outbox_t).where(and_(o.id == _b("w_id"), _on_the_row(o.status) == "PENDING"))
                            .values(next_attempt_at=_b("next_attempt_at"), last_error=_b("error")))
        # The newest messages of one kind about one transfer, binding or window, for operators: one range of
        # ix_outbox_subject_kind_id read backwards, however many notices a binding's quota has had.
        self.outbox_of_subject = p(select(o.id, o.destination, o.kind, o.state, o.reason, o.message_id, o.status,
                                          o.attempts, o.last_error, o.next_attempt_at, o.created_at, o.done_at)
                                   .where(and_(o.subject_id == _b("subject"), o.kind == _b("kind")))
                                   .order_by(o.id.desc()).limit(_b("limit")))
        self.expire_pending = p(update(outbox_t).where(and_(o.kind == _b("w_kind"), o.subject_id == _b("w_subject"),
                                                            _on_the_row(o.status) == "PENDING"))
                                .values(status="EXPIRED", done_at=_b("at"), last_error=_b("error"))
                                .returning(o.destination, o.message_id))

    @functools.lru_cache(maxsize=8)  # noqa: B019 -- one Statements per engine, kept for the engine's life
    def binding_page(self, side: str, after: bool) -> Prepared:
        """Bindings in one state, of one province on `side` ("giver", "receiver"; "": any), newest first, from
        just before a position when `after`: one range of one of the bindings' (…, state, created_at, binding_id)
        indexes, read in its order."""
        b = bindings_t.c
        query = select(*BINDING_VIEW).where(b.state == _b("state"))
        if side:
            query = query.where((b.giver_province if side == "giver" else b.receiver_province) == _b("province"))
        if after:
            query = query.where(b.created_at <= _b("at"), (b.created_at < _b("at")) | (b.binding_id < _b("w_id")))
        return Prepared(query.order_by(b.created_at.desc(), b.binding_id.desc()).limit(_b("limit")), self._dialect)

    @functools.lru_cache(maxsize=64)  # noqa: B019 -- one Statements per engine, kept for the engine's life
    def claim_due_except(self, destinations: tuple[str, ...]) -> Prepared:
        """Due messages, leased by no one, for any destination but these (provinces whose lanes are full)."""
        o = outbox_t.c
        due = (select(o.id, o.destination, o.kind, o.state, o.reason, o.message_id, o.subject_id, o.attempts,
                      o.created_at)
               .where(and_(o.status == "PENDING", o.next_attempt_at <= _b("now"),
                           *(o.destination != destination for destination in destinations)))
               .order_by(o.next_attempt_at, o.id).limit(_b("limit")))
        if self._dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)  # several gateways share the outbox
        return Prepared(due, self._dialect)
