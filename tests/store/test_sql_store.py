"""The SQL repositories and unit of work against real databases: a SQLite file and PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import Engine, Table, func, select, text

from gateway.api.status import status_code_for
from gateway.domain import reasons
from gateway.domain.bindings import Binding, BindingState
from gateway.domain.clock import BEIJING
from gateway.domain.envelope import Envelope
from gateway.domain.errors import DatabaseUnavailable
from gateway.domain.outbox import (
    DeliverTransfer,
    NotifyBindingOutcome,
    NotifyConsumption,
    NotifyQuota,
    NotifySettlement,
    NotifyTransferOutcome,
    OutboxKind,
    RequestConsent,
)
from gateway.domain.provinces import Policy, Province, ProvinceKey, ProvinceStatus
from gateway.domain.records import RequestOutcome
from gateway.domain.transfers import INT64_MAX, Transfer, TransferEvent, TransferState
from gateway.security.encryption import FieldCipher, SealedValueError
from gateway.security.signing import verify_signature
from gateway.store import engine as engine_module
from gateway.store.engine import make_engine
from gateway.store.sealing import NoSealer
from gateway.store.tables import events_t, outbox_t, requests_t, transfers_t
from gateway.store.unit_of_work import SqlStore, SqlUnitOfWork
from gateway.usecases.audit import verify_audit
from tests.support import wait_until

T0 = datetime(2026, 5, 1, 7, 0, 0, 123456, tzinfo=UTC)
SHA_A, SHA_B = b"\xaa" * 32, b"\xbb" * 32
INSTRUCTION = "gongji.v1.TransferInstruction"
DELIVER, NOTIFY = DeliverTransfer(), NotifyTransferOutcome(TransferState.COMMITTED)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def is_utc(at: datetime | None) -> bool:
    return at is not None and at.utcoffset() == timedelta(0)


def count(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def outbox_row(engine: Engine, row_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(outbox_t).where(outbox_t.c.id == row_id)).one()


def envelope(payload: bytes = b"\x0a\x05tr-01\x00\xff payload") -> Envelope:
    return Envelope(payload, INSTRUCTION, "650000", "xj-2026", "ed25519", b"\x5a" * 64)


def transfer(
    transfer_id: str | None = None,
    state: TransferState = TransferState.RECEIVED,
    created_at: datetime = T0,
    return_deadline: datetime | None = None,
    delivery_deadline: datetime | None = None,
    **changes: Any,
) -> Transfer:
    changes.setdefault("amount_fen", 50_000)
    return Transfer(
        transfer_id=transfer_id or uid("tr"),
        state=state,
        giver_province="650000",
        receiver_province="620000",
        giver_id_masked="650502********1230",
        receiver_id_masked="620102********0026",
        currency="CNY",
        created_at=created_at,
        updated_at=created_at,
        return_deadline=return_deadline or created_at + timedelta(hours=15),
        delivery_deadline=delivery_deadline or created_at + timedelta(minutes=10),
        instruction_sha256=SHA_A,
        **changes,
    )


def add_transfers(store: SqlStore, *transfers: Transfer) -> None:
    with SqlUnitOfWork(store) as uow:
        for item in transfers:
            uow.transfers.add(item, b"\x01" * 32, b"\x02" * 32, envelope())
        uow.commit()


# -- provinces ---------------------------------------------------------------------------------------


def xinjiang() -> Province:
    return Province(
        code="650000",
        name="新疆",
        endpoint="xj.example.cn:7443",
        status=ProvinceStatus.ACTIVE,
        keys=(
            # Sorted by key_id: the order in which the repository lists keys.
            ProvinceKey("xj-2025", b"\x01" * 32, "ed25519", T0.astimezone(BEIJING) - timedelta(days=365), T0),
            ProvinceKey("xj-2026", b"\x02" * 32, "ed25519", T0, None),
        ),
        # Zero and False are overrides too, not "unset".
        policy=Policy(single_relation_only=True, daily_transfer_limit=5, blackout_start_minute=0, return_hour=0),
        updated_at=T0.astimezone(BEIJING),
    )


def gansu() -> Province:
    return Province(
        code="620000",
        name="甘肃",
        endpoint="10.0.0.7:7443",
        keys=(ProvinceKey("gs-1", b"\x03" * 32),),
        policy=Policy(),
        updated_at=T0,
    )


def test_sqlite_syncs_its_log_at_every_commit_unless_told_otherwise(tmp_path: Path) -> None:
    """FULL by default: an answered request is on disk before its answer leaves (WAL, synchronous=2)."""
    for given, journal, synchronous in (((), "wal", 2), (("NORMAL",), "wal", 1)):
        engine = make_engine(f"sqlite:///{tmp_path / f'sync-{synchronous}.db'}", *given)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == journal
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == synchronous
        engine.dispose()
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        make_engine(f"sqlite:///{tmp_path / 'off.db'}", "OFF")


def test_provinces_and_keys_round_trip_through_add_get_list_and_update(store: SqlStore) -> None:
    with SqlUnitOfWork(store) as uow:
        uow.provinces.add(xinjiang())
        uow.provinces.add(gansu())
        uow.commit()

    with SqlUnitOfWork(store) as uow:
        stored = uow.provinces.get("650000")
        assert stored == xinjiang()
        assert stored is not None and stored.policy.return_hour == 0 and stored.policy.single_relation_only is True
        assert is_utc(stored.updated_at)
        assert all(is_utc(key.valid_from) for key in stored.keys)
        assert uow.provinces.list() == [gansu(), xinjiang()]
        assert uow.provinces.get("110000") is None
        assert uow.provinces.key_owner("xj-2025") == ("650000", xinjiang().keys[0])
        assert uow.provinces.key_owner("gs-1") == ("620000", gansu().keys[0])
        assert uow.provinces.key_owner("nobody-1") is None

    later = T0 + timedelta(days=30)
    changed = dataclasses.replace(
        xinjiang(),
        name="新疆维吾尔自治区",
        endpoint="xj2.example.cn:8443",
        status=ProvinceStatus.SUSPENDED,
        keys=(
            xinjiang().keys[0],
            ProvinceKey("xj-2026", b"\x02" * 32, "ed25519", T0, later),  # retired
            ProvinceKey("xj-2027", b"\x04" * 32, "ed25519", later, None),  # added
        ),
        policy=Policy(max_transfer_fen=100_000, delivery_deadline_seconds=60),
        updated_at=later,
    )
    with SqlUnitOfWork(store) as uow:
        uow.provinces.update(changed)
        uow.commit()

    with SqlUnitOfWork(store) as uow:
        assert uow.provinces.get("650000") == changed
        assert uow.provinces.get("620000") == gansu()
        assert [p.code for p in uow.provinces.list()] == ["620000", "650000"]


def test_a_routing_change_made_after_a_transaction_began_is_read_by_it_once_it_locks_the_table(
        engine: Engine, store: SqlStore) -> None:
    """A unit of work reads the routing table's version as it begins (on PostgreSQL in its BEGIN's round trip);
    one that locks the table to change it reads the version again after the lock, so what it reads is what it
    changes, not the table as it was when it began."""
    with SqlUnitOfWork(store) as uow:
        uow.provinces.add(xinjiang())
        uow.commit()
    with SqlUnitOfWork(store) as uow:  # this store's cache holds the table as it stands
        assert uow.provinces.get("650000") == xinjiang()
    renamed = dataclasses.replace(xinjiang(), name="新疆维吾尔自治区", updated_at=T0 + timedelta(days=1))
    if store.is_sqlite:
        pytest.skip("SQLite's writers take the whole database at BEGIN: no change comes between BEGIN and lock")
    other_gateway = SqlStore(engine, NoSealer())
    with SqlUnitOfWork(store) as uow:
        with SqlUnitOfWork(other_gateway) as theirs:
            theirs.provinces.update(renamed)
            theirs.commit()
        uow.provinces.lock()
        assert uow.provinces.get("650000") == renamed


# -- idempotency records ----------------------------------------------------------------------------


def test_a_key_is_claimed_once(engine: Engine, store: SqlStore) -> None:
    message_id = uid("tr")
    with SqlUnitOfWork(store) as uow:
        assert uow.requests.claim("650000", message_id, INSTRUCTION, SHA_A, T0) is True
        pending = uow.requests.get("650000", message_id)
        assert pending is not None and pending.outcome is RequestOutcome.PENDING
        uow.commit()

    with SqlUnitOfWork(store) as uow:
        # A later transaction, even with other bytes: the key is taken and the first record stays.
        assert uow.requests.claim("650000", message_id, INSTRUCTION, SHA_B, T0 + timedelta(seconds=5)) is False
        stored = uow.requests.get("650000", message_id)
        assert stored is not None and stored.payload_sha256 == SHA_A
        # The key is the pair (sender, message_id): another sender may use the same id.
        assert uow.requests.claim("620000", message_id, INSTRUCTION, SHA_B, T0) is True
        uow.commit()
    assert count(engine, requests_t) == 2

    with SqlUnitOfWork(store) as uow, pytest.raises(ValueError, match="naive"):
        uow.requests.claim("650000", uid("tr"), INSTRUCTION, SHA_A, datetime(2026, 5, 1, 7, 0))


def test_recorded_responses_and_rejections_are_returned(store: SqlStore) -> None:
    ok, refused, refused_no_field = uid("ok"), uid("no"), uid("no")
    with SqlUnitOfWork(store) as uow:
        for message_id in (ok, refused, refused_no_field):
            assert uow.requests.claim("650000", message_id, INSTRUCTION, SHA_A, T0)
        uow.requests.record_response("650000", ok, b"\x00signed receipt\xff")
        uow.requests.record_rejection(
            "650000",
            refused,
            "FailedPrecondition",
            "DAILY_LIMIT_REACHED",
            "amount_fen",
            "at most 3 transfers per giver per day",
        )
        uow.requests.record_rejection("650000", refused_no_field, "AlreadyExists", "BINDING_EXISTS", None, "exists")
        uow.commit()
    with SqlUnitOfWork(store) as uow:
        answered = uow.requests.get("650000", ok)
        rejected = uow.requests.get("650000", refused)
        rejected_no_field = uow.requests.get("650000", refused_no_field)

    assert answered is not None
    assert (answered.sender, answered.message_id, answered.payload_type) == ("650000", ok, INSTRUCTION)
    assert answered.payload_sha256 == SHA_A
    assert answered.outcome is RequestOutcome.OK
    assert answered.response == b"\x00signed receipt\xff"
    assert (answered.error_kind, answered.error_reason, answered.error_field, answered.error_message) == (None,) * 4

    assert rejected is not None and rejected_no_field is not None
    assert rejected.outcome is RequestOutcome.REJECTED and rejected.response is None
    assert (rejected.error_kind, rejected.error_reason, rejected.error_field, rejected.error_message) == (
        "FailedPrecondition",
        "DAILY_LIMIT_REACHED",
        "amount_fen",
        "at most 3 transfers per giver per day",
    )
    assert rejected_no_field.outcome is RequestOutcome.REJECTED
    assert (rejected_no_field.error_kind, rejected_no_field.error_reason, rejected_no_field.error_field) == (
        "AlreadyExists",
        "BINDING_EXISTS",
        None,
    )


# -- the unit of work --------------------------------------------------------------------------------


def test_leaving_without_commit_rolls_everything_back(engine: Engine, store: SqlStore) -> None:
    message_id = uid("tr")
    with SqlUnitOfWork(store) as uow:
        assert uow.requests.claim("650000", message_id, INSTRUCTION, SHA_A, T0)
        uow.transfers.add(transfer(message_id), b"\x01" * 32, b"\x02" * 32, envelope())
        uow.outbox.enqueue("620000", DELIVER, f"deliver-{message_id}", message_id, T0)
        uow.provinces.add(gansu())
        assert uow.transfers.exists(message_id)  # visible inside its own transaction

    with SqlUnitOfWork(store) as uow:
        assert uow.requests.get("650000", message_id) is None
        assert uow.transfers.get(message_id) is None
        assert not uow.transfers.exists(message_id)
        assert uow.provinces.get("620000") is None
        assert uow.outbox.claim_due(T0 + timedelta(days=1), 10, T0 + timedelta(days=2)) == []
    for table in ("requests", "transfers", "transfer_events", "outbox", "provinces", "province_keys"):
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(text(table))).scalar_one() == 0, table

    # The key is free again: nothing of the abandoned attempt remains. An exception rolls back too.
    with pytest.raises(RuntimeError, match="boom"), SqlUnitOfWork(store) as uow:
        assert uow.requests.claim("650000", message_id, INSTRUCTION, SHA_B, T0) is True
        uow.transfers.add(transfer(message_id), b"\x01" * 32, b"\x02" * 32, envelope())
        raise RuntimeError("boom")
    with SqlUnitOfWork(store) as uow:
        assert uow.requests.get("650000", message_id) is None
        assert uow.transfers.get(message_id) is None


def test_a_commit_that_fails_is_rolled_back_and_its_connection_serves_the_next_unit_of_work(
        engine: Engine, store: SqlStore) -> None:
    """On PostgreSQL the commit's tail goes in a batch: a statement failing in it surfaces at the COMMIT and leaves
    the transaction aborted. It must end there, not go back to the pool with the connection."""
    with SqlUnitOfWork(store) as uow:
        uow.audit.record("province", "650000", "ADDED", T0)
        uow.commit()
    with engine.begin() as conn:  # the head one entry behind: the next entry's number is taken
        conn.execute(text("UPDATE audit_head SET size = size - 1"))
    assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]  # the next unit of work takes this one

    with pytest.raises(Exception, match=r"(?i)unique|duplicate"), SqlUnitOfWork(store) as uow:
        uow.provinces.add(gansu())
        uow.audit.record("province", "620000", "ADDED", T0)
        uow.commit()

    with SqlUnitOfWork(store) as uow:  # the same connection, in no transaction
        assert uow.provinces.get("620000") is None
        assert uow.audit.head()[0] == 0
    assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]


# -- transfers ---------------------------------------------------------------------------------------


def test_a_transfer_round_trips_with_utc_datetimes_and_history(store: SqlStore) -> None:
    created = datetime(2026, 5, 1, 15, 0, 1, 654321, tzinfo=BEIJING)
    original = transfer(
        created_at=created,
        return_deadline=datetime(2026, 5, 2, 6, 0, tzinfo=BEIJING),
        delivery_deadline=created + timedelta(seconds=600),
        binding_id="bd-0001",
        settlement_window_id="2026-05-01",
        amount_fen=INT64_MAX,
    )
    add_transfers(store, original)

    with SqlUnitOfWork(store) as uow:
        plain = uow.transfers.get(original.transfer_id)
        full = uow.transfers.get(original.transfer_id, with_history=True)
        stored_envelope = uow.transfers.instruction_envelope(original.transfer_id, INSTRUCTION)
        assert uow.transfers.exists(original.transfer_id)
        assert uow.transfers.get(uid("tr")) is None
        assert uow.transfers.instruction_envelope(uid("tr"), INSTRUCTION) is None

    assert plain == original  # aware datetimes compare as instants
    assert full == dataclasses.replace(original, history=(TransferEvent(TransferState.RECEIVED, created, ""),))
    assert full is not None
    for at in (full.created_at, full.updated_at, full.return_deadline, full.delivery_deadline, full.history[0].at):
        assert is_utc(at)
    assert full.created_at.microsecond == 654321
    assert full.return_deadline == datetime(2026, 5, 1, 22, 0, tzinfo=UTC)
    # The giver's envelope comes back byte for byte, to be passed through unchanged.
    assert stored_envelope == envelope()


def test_each_store_seals_with_the_sealer_it_was_given(store: SqlStore) -> None:
    """No sealer is looked up by engine: a second store on the same database keeps to its own."""
    item = transfer()
    add_transfers(store, item)
    with SqlUnitOfWork(store) as uow:
        assert uow.transfers.instruction_envelope(item.transfer_id, INSTRUCTION) == envelope()
    other_keys = SqlStore(store.engine, FieldCipher.generate("other"))
    with SqlUnitOfWork(other_keys) as uow, pytest.raises(SealedValueError, match="'test'"):
        uow.transfers.instruction_envelope(item.transfer_id, INSTRUCTION)
    without_keys = SqlStore(store.engine, NoSealer())
    with SqlUnitOfWork(without_keys) as uow:
        assert uow.transfers.get(item.transfer_id) is not None  # what is not personal data reads as ever
        with pytest.raises(RuntimeError, match="no sealer configured"):
            uow.transfers.add(transfer(), b"\x01" * 32, b"\x02" * 32, envelope())


def test_change_state_happens_once(store: SqlStore) -> None:
    item = transfer()
    add_transfers(store, item)
    t1, t2, t3 = (T0 + timedelta(minutes=n) for n in (1, 2, 3))

    with SqlUnitOfWork(store) as uow:
        assert uow.transfers.change_state(item.transfer_id, [TransferState.RECEIVED], TransferState.DELIVERED, "", t1)
        uow.commit()
    with SqlUnitOfWork(store) as uow:
        assert not uow.transfers.change_state(
            item.transfer_id, [TransferState.RECEIVED], TransferState.DELIVERED, "", t2
        )
        uow.commit()

    with SqlUnitOfWork(store) as uow:
        stored = uow.transfers.get(item.transfer_id, with_history=True)
    assert stored is not None
    assert stored.state is TransferState.DELIVERED
    assert stored.updated_at == t1
    assert [(e.state, e.at) for e in stored.history] == [(TransferState.RECEIVED, T0), (TransferState.DELIVERED, t1)]

    with SqlUnitOfWork(store) as uow:
        assert uow.transfers.change_state(
            item.transfer_id,
            [TransferState.RECEIVED, TransferState.DELIVERED],
            TransferState.RETURNED,
            "CONFIRMATION_DEADLINE_PASSED",
            t3,
        )
        # A final state never changes.
        assert not uow.transfers.change_state(
            item.transfer_id, [TransferState.DELIVERED], TransferState.COMMITTED, "", t3
        )
        assert not uow.transfers.change_state(uid("tr"), [TransferState.RECEIVED], TransferState.DELIVERED, "", t3)
        uow.commit()
    with SqlUnitOfWork(store) as uow:
        stored = uow.transfers.get(item.transfer_id, with_history=True)
    assert stored is not None
    assert (stored.state, stored.reason, stored.updated_at) == (
        TransferState.RETURNED,
        "CONFIRMATION_DEADLINE_PASSED",
        t3,
    )
    assert [e.state for e in stored.history] == [
        TransferState.RECEIVED,
        TransferState.DELIVERED,
        TransferState.RETURNED,
    ]
    assert stored.history[-1].reason == "CONFIRMATION_DEADLINE_PASSED"


def test_a_long_reason_from_a_province_does_not_break_the_state_change(store: SqlStore) -> None:
    # A receiving province's DeliverTransfer answer carries a free-text reject_reason, which the province
    # client passes to change_state(..., result.reason); transfers.reason is VARCHAR(64), so the store cuts it.
    item = transfer()
    add_transfers(store, item)
    reason = "RECEIVER_NOT_INSURED_IN_THIS_POOLING_AREA_SINCE_THE_LAST_MEMBER_CHANGE_REPORT_" + "X" * 40
    with SqlUnitOfWork(store) as uow:
        assert uow.transfers.change_state(
            item.transfer_id, [TransferState.RECEIVED], TransferState.REJECTED, reason, T0
        )
        uow.commit()
    with SqlUnitOfWork(store) as uow:
        stored = uow.transfers.get(item.transfer_id, with_history=True)
    assert stored is not None and stored.state is TransferState.REJECTED
    assert stored.reason and reason.startswith(stored.reason)


def test_deadline_queries_select_exactly_the_right_transfers(store: SqlStore) -> None:
    now = T0.astimezone(BEIJING)  # the store compares instants, whatever the zone
    past, future = now - timedelta(seconds=1), now + timedelta(microseconds=1)
    far = now + timedelta(days=1)
    rows = {
        "delivered-past": (TransferState.DELIVERED, past, past),
        "delivered-now": (TransferState.DELIVERED, now, past),
        "delivered-future": (TransferState.DELIVERED, future, past),
        "received-past": (TransferState.RECEIVED, past, past),
        "received-now": (TransferState.RECEIVED, far, now),
        "received-future": (TransferState.RECEIVED, far, future),
        "committed-past": (TransferState.COMMITTED, past, past),
        "declined-past": (TransferState.DECLINED, past, past),
        "returned-past": (TransferState.RETURNED, past, past),
        "rejected-past": (TransferState.REJECTED, past, past),
    }
    suffix = uuid.uuid4().hex[:8]
    add_transfers(
        store,
        *(
            transfer(f"{name}-{suffix}", state, now - timedelta(hours=1), return_at, deliver_at)
            for name, (state, return_at, deliver_at) in rows.items()
        ),
    )

    with SqlUnitOfWork(store) as uow:
        due = uow.transfers.due_for_return(now, 100)
        undelivered = uow.transfers.undelivered_past_deadline(now, 100)
        one = uow.transfers.due_for_return(now, 1)
    assert sorted(due) == [f"delivered-now-{suffix}", f"delivered-past-{suffix}"]
    assert sorted(undelivered) == [f"received-now-{suffix}", f"received-past-{suffix}"]
    assert len(one) == 1 and one[0] in due


# -- outbox ------------------------------------------------------------------------------------------


def test_enqueue_is_idempotent_and_claim_due_leases_due_pending_messages(engine: Engine, store: SqlStore) -> None:
    subject = uid("tr")
    now, lease_until = T0 + timedelta(seconds=5), T0 + timedelta(seconds=35)
    with SqlUnitOfWork(store) as uow:
        uow.outbox.enqueue("620000", NOTIFY, f"done-{subject}", subject, T0 - timedelta(hours=1))
        [done] = uow.outbox.claim_due(T0 - timedelta(hours=1), 10, T0 - timedelta(hours=1))
        uow.outbox.mark_done(done.id, T0 - timedelta(hours=1))
        uow.outbox.enqueue("620000", DELIVER, f"due-{subject}", subject, T0)
        uow.outbox.enqueue("620000", DELIVER, f"due-{subject}", subject, T0 + timedelta(seconds=1))
        uow.outbox.enqueue("650000", NOTIFY, f"later-{subject}", subject, T0 + timedelta(seconds=10))
        uow.commit()
    with SqlUnitOfWork(store) as uow:
        # The same (destination, message_id) again, in a later transaction: still one row, the first.
        uow.outbox.enqueue("620000", NOTIFY, f"due-{subject}", uid("tr"), T0 - timedelta(days=1))
        uow.commit()
    assert count(engine, outbox_t) == 3

    with SqlUnitOfWork(store) as uow:
        first = uow.outbox.claim_due(now, 10, lease_until)
        uow.commit()
    assert [(m.message_id, m.destination, m.content, m.subject_id, m.attempts) for m in first] == [
        (f"due-{subject}", "620000", DELIVER, subject, 1)
    ]
    assert first[0].created_at == T0
    row = outbox_row(engine, first[0].id)
    assert (row.status, row.attempts, row.next_attempt_at) == ("PENDING", 1, lease_until)

    with SqlUnitOfWork(store) as uow:
        assert uow.outbox.claim_due(now, 10, lease_until) == []  # leased: nobody else takes it meanwhile
        uow.commit()

    after_lease = lease_until
    with SqlUnitOfWork(store) as uow:
        again = uow.outbox.claim_due(after_lease, 10, after_lease + timedelta(seconds=30))
        uow.commit()
    # Oldest due first: the later message (due at +10 s) before the re-leased one (due at +35 s).
    assert [(m.message_id, m.attempts) for m in again] == [(f"later-{subject}", 1), (f"due-{subject}", 2)]

    with SqlUnitOfWork(store) as uow:
        limited = uow.outbox.claim_due(after_lease + timedelta(minutes=5), 1, after_lease + timedelta(minutes=6))
    assert len(limited) == 1

    with SqlUnitOfWork(store) as uow:
        # The key is (destination, message_id): the same id to another province is another message.
        uow.outbox.enqueue("650000", NOTIFY, f"due-{subject}", subject, T0)
        uow.commit()
    assert count(engine, outbox_t) == 4


def test_a_leased_enqueue_is_claimed_by_nobody_until_its_lease_ends_and_a_release_gives_it_back(
        engine: Engine, store: SqlStore) -> None:
    subject = uid("tr")
    lease_until = T0 + timedelta(seconds=30)
    committed: list[str] = []
    with SqlUnitOfWork(store) as uow:
        message = uow.outbox.enqueue("620000", DELIVER, f"dlv-{subject}", subject, T0, lease_until)
        # Already queued (by this or another transaction): nothing to hand over.
        assert uow.outbox.enqueue("620000", DELIVER, f"dlv-{subject}", subject, T0, lease_until) is None
        uow.after_commit(lambda: 1 / 0)  # type: ignore[func-returns-value]
        uow.after_commit(lambda: committed.append("handed"))
        assert committed == []
        uow.commit()  # committed: a failing action after it is logged, not raised, and the next still runs
    assert committed == ["handed"]
    assert message is not None and (message.message_id, message.subject_id, message.attempts) == (
        f"dlv-{subject}", subject, 1)
    row = outbox_row(engine, message.id)
    assert (row.status, row.attempts, row.next_attempt_at, row.created_at) == ("PENDING", 1, lease_until, T0)
    with SqlUnitOfWork(store) as uow:
        assert [m.id for m in uow.outbox.claim_due(lease_until - timedelta(microseconds=1), 10, lease_until)
                if m.subject_id == subject] == []
        uow.outbox.release([message.id], T0 + timedelta(seconds=1))
        uow.commit()
    row = outbox_row(engine, message.id)
    assert (row.status, row.attempts, row.next_attempt_at) == ("PENDING", 0, T0 + timedelta(seconds=1))
    with SqlUnitOfWork(store) as uow:
        due = uow.outbox.claim_due(T0 + timedelta(seconds=1), 10, lease_until)
        [again] = [m for m in due if m.subject_id == subject]
        uow.after_commit(lambda: committed.append("rolled back"))
    assert again.attempts == 1 and committed == ["handed"]  # left without commit(): never run


def test_mark_done_and_mark_retry(engine: Engine, store: SqlStore) -> None:
    subject = uid("tr")
    with SqlUnitOfWork(store) as uow:
        uow.outbox.enqueue("620000", DELIVER, f"a-{subject}", subject, T0)
        uow.outbox.enqueue("650000", NOTIFY, f"b-{subject}", subject, T0)
        uow.commit()
    with SqlUnitOfWork(store) as uow:
        a, b = sorted(uow.outbox.claim_due(T0, 10, T0 + timedelta(seconds=30)), key=lambda m: m.message_id)
        uow.outbox.mark_done(a.id, T0 + timedelta(seconds=1))
        uow.outbox.mark_retry(b.id, T0 + timedelta(minutes=5), "UNAVAILABLE: " + "x" * 300)
        uow.commit()

    done = outbox_row(engine, a.id)
    assert (done.status, done.done_at, done.last_error) == ("DONE", T0 + timedelta(seconds=1), "")
    retried = outbox_row(engine, b.id)
    assert (retried.status, retried.next_attempt_at, retried.done_at) == ("PENDING", T0 + timedelta(minutes=5), None)
    assert retried.last_error.startswith("UNAVAILABLE: ") and len(retried.last_error) == 128

    with SqlUnitOfWork(store) as uow:
        assert (
            uow.outbox.claim_due(T0 + timedelta(minutes=5) - timedelta(microseconds=1), 10, T0 + timedelta(hours=1))
            == []
        )
        # Done is final: neither done again nor retried.
        uow.outbox.mark_done(a.id, T0 + timedelta(hours=1))
        uow.outbox.mark_retry(a.id, T0, "LATE")
        uow.commit()
    assert outbox_row(engine, a.id).done_at == T0 + timedelta(seconds=1)
    assert outbox_row(engine, a.id).status == "DONE"

    with SqlUnitOfWork(store) as uow:
        [retry] = uow.outbox.claim_due(T0 + timedelta(minutes=5), 10, T0 + timedelta(hours=1))
    assert (retry.id, retry.attempts) == (b.id, 2)


def test_each_message_keeps_what_it_tells_in_its_own_columns(engine: Engine, store: SqlStore) -> None:
    """The state and reason of an outcome are stored with the message, not read back out of its id."""
    subject = uid("s")
    told = [DeliverTransfer(), NotifyTransferOutcome(TransferState.DECLINED, "RECEIVER_DECLINED"), RequestConsent(),
            NotifyBindingOutcome(BindingState.SUSPENDED, "SETTLEMENT_SUSPENDED"), NotifySettlement()]
    with SqlUnitOfWork(store) as uow:
        for n, content in enumerate(told):
            uow.outbox.enqueue("620000", content, f"m{n}-{subject}", subject, T0)
        leased = uow.outbox.enqueue("650000", NotifyTransferOutcome(TransferState.RETURNED, "X" * 70),
                                    f"leased-{subject}", subject, T0, T0 + timedelta(seconds=30))
        uow.commit()
    with SqlUnitOfWork(store) as uow:
        claimed = sorted(uow.outbox.claim_due(T0, 10, T0 + timedelta(seconds=30)), key=lambda m: m.message_id)
        uow.commit()
    assert [m.content for m in claimed] == told
    assert [m.kind.value for m in claimed] == ["DELIVER_TRANSFER", "NOTIFY_TRANSFER_OUTCOME", "REQUEST_CONSENT",
                                               "NOTIFY_BINDING_OUTCOME", "NOTIFY_SETTLEMENT"]
    assert leased is not None and leased.content == NotifyTransferOutcome(TransferState.RETURNED, "X" * 64)
    with engine.connect() as conn:
        rows = conn.execute(select(outbox_t.c.message_id, outbox_t.c.state, outbox_t.c.reason)
                            .where(outbox_t.c.subject_id == subject).order_by(outbox_t.c.message_id)).all()
    assert [tuple(row) for row in rows] == [
        (f"leased-{subject}", "RETURNED", "X" * 64), (f"m0-{subject}", "", ""),
        (f"m1-{subject}", "DECLINED", "RECEIVER_DECLINED"), (f"m2-{subject}", "", ""),
        (f"m3-{subject}", "SUSPENDED", "SETTLEMENT_SUSPENDED"), (f"m4-{subject}", "", "")]


def test_expire_pending_ends_only_the_matching_pending_messages(engine: Engine, store: SqlStore) -> None:
    subject, other = uid("tr"), uid("tr")
    with SqlUnitOfWork(store) as uow:
        uow.outbox.enqueue("620000", DELIVER, f"deliver-{subject}", subject, T0)
        uow.outbox.enqueue("620000", DELIVER, f"deliver-again-{subject}", subject, T0)
        uow.outbox.enqueue("650000", NOTIFY, f"notify-{subject}", subject, T0)
        uow.outbox.enqueue("620000", DELIVER, f"deliver-{other}", other, T0)
        uow.commit()
    with SqlUnitOfWork(store) as uow:
        by_id = {m.message_id: m.id for m in uow.outbox.claim_due(T0, 10, T0)}
        uow.outbox.mark_done(by_id[f"deliver-again-{subject}"], T0)
        uow.commit()

    expired_at = T0 + timedelta(minutes=10)
    with SqlUnitOfWork(store) as uow:
        uow.outbox.expire_pending(DELIVER.kind, subject, expired_at, "DESTINATION_UNREACHABLE")
        uow.commit()

    expired = outbox_row(engine, by_id[f"deliver-{subject}"])
    assert (expired.status, expired.done_at, expired.last_error) == ("EXPIRED", expired_at, "DESTINATION_UNREACHABLE")
    assert outbox_row(engine, by_id[f"deliver-again-{subject}"]).status == "DONE"
    assert outbox_row(engine, by_id[f"deliver-again-{subject}"]).done_at == T0
    assert outbox_row(engine, by_id[f"notify-{subject}"]).status == "PENDING"
    assert outbox_row(engine, by_id[f"deliver-{other}"]).status == "PENDING"
    with SqlUnitOfWork(store) as uow:
        due = {m.message_id for m in uow.outbox.claim_due(expired_at, 10, expired_at)}
    assert due == {f"notify-{subject}", f"deliver-{other}"}


def test_a_subjects_messages_are_the_newest_of_the_kinds_asked_for_oldest_first(store: SqlStore) -> None:
    """A quota's notices grow with every draw: an inspection reads the newest few of its kinds, never the rest."""
    subject = uid("b")
    with SqlUnitOfWork(store) as uow:
        uow.outbox.enqueue("620000", RequestConsent(), f"consent-{subject}", subject, T0)
        for n in range(30):
            uow.outbox.enqueue("620000", NotifyQuota(2 * n), f"q{n:02}-{subject}", subject, T0)
            uow.outbox.enqueue("650000", NotifyConsumption(2 * n + 1), f"c{n:02}-{subject}", subject, T0)
        uow.outbox.enqueue("620000", NotifyQuota(0), f"q-{uid('b')}", uid("b"), T0)  # another subject
        uow.commit()
    with SqlUnitOfWork(store) as uow:
        newest = uow.outbox.of_subject(subject, (OutboxKind.NOTIFY_QUOTA, OutboxKind.NOTIFY_CONSUMPTION), 7)
        consent = uow.outbox.of_subject(subject, (OutboxKind.REQUEST_CONSENT, OutboxKind.NOTIFY_BINDING_OUTCOME), 7)
    assert [m.message_id for m in newest] == [f"{k}{n}-{subject}" for n, k in
                                              [(26, "c"), (27, "q"), (27, "c"), (28, "q"), (28, "c"), (29, "q"),
                                               (29, "c")]]
    assert [m.content for m in newest][-2:] == [NotifyQuota(58), NotifyConsumption(59)]
    assert [m.message_id for m in consent] == [f"consent-{subject}"]


# -- concurrency -------------------------------------------------------------------------------------


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `target` in a thread; its result or exception lands in the returned dict."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as error:  # re-raised in the test thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def result_of(thread: threading.Thread, outcome: dict[str, Any]) -> Any:
    thread.join(20)
    assert not thread.is_alive(), "the thread did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def test_racing_claims_of_one_key_give_exactly_one_winner(engine: Engine, store: SqlStore) -> None:
    message_id = uid("tr")
    barrier = threading.Barrier(2, timeout=10)

    def claim() -> bool:
        barrier.wait()
        with SqlUnitOfWork(store) as uow:
            won = uow.requests.claim("650000", message_id, INSTRUCTION, SHA_A, T0)
            uow.commit()
        return won

    runs = [in_thread(claim) for _ in range(2)]
    assert sorted(result_of(*run) for run in runs) == [False, True]
    assert count(engine, requests_t) == 1


def waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


POSTGRES_ONLY = pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@POSTGRES_ONLY
def test_a_concurrent_claim_waits_for_the_first_commit_then_loses(engine: Engine, store: SqlStore) -> None:
    message_id = uid("tr")

    def second_claim() -> tuple[bool, Any]:
        with SqlUnitOfWork(store) as uow:
            won = uow.requests.claim("650000", message_id, INSTRUCTION, SHA_A, T0)
            stored = uow.requests.get("650000", message_id)
            uow.commit()
        return won, stored

    with SqlUnitOfWork(store) as first:
        assert first.requests.claim("650000", message_id, INSTRUCTION, SHA_A, T0) is True
        thread, outcome = in_thread(second_claim)
        # The unique key makes the second insert wait on the first transaction, not fail or succeed.
        wait_until(lambda: waiting_on_a_lock(engine), timeout=10, what="the second claim to wait on a lock")
        assert thread.is_alive() and not outcome
        first.requests.record_response("650000", message_id, b"receipt")
        first.commit()

    won, stored = result_of(thread, outcome)
    assert won is False
    # After waiting it sees the committed answer, ready to be replayed.
    assert stored is not None and stored.outcome is RequestOutcome.OK and stored.response == b"receipt"


@POSTGRES_ONLY
def test_a_concurrent_claim_wins_when_the_first_rolls_back(engine: Engine, store: SqlStore) -> None:
    message_id = uid("tr")

    def second_claim() -> bool:
        with SqlUnitOfWork(store) as uow:
            won = uow.requests.claim("650000", message_id, INSTRUCTION, SHA_B, T0)
            uow.commit()
        return won

    with SqlUnitOfWork(store) as first:
        assert first.requests.claim("650000", message_id, INSTRUCTION, SHA_A, T0) is True
        thread, outcome = in_thread(second_claim)
        wait_until(lambda: waiting_on_a_lock(engine), timeout=10, what="the second claim to wait on a lock")
        # Leaving without commit: the first attempt vanishes and the key is free.

    assert result_of(thread, outcome) is True
    with SqlUnitOfWork(store) as uow:
        stored = uow.requests.get("650000", message_id)
    assert stored is not None and stored.payload_sha256 == SHA_B


def test_a_read_only_unit_of_work_does_not_hold_writers_back(store: SqlStore) -> None:
    """`gongji audit verify` reads the whole chain in one: the gateway must go on writing meanwhile."""
    written = threading.Event()

    def write() -> None:
        with SqlUnitOfWork(store) as uow:
            uow.audit.record("test", uid("s"), "WRITTEN", datetime.now(UTC))
            uow.commit()
        written.set()

    with SqlUnitOfWork(store, read_only=True) as reader:
        before = reader.audit.head()
        writer = threading.Thread(target=write)
        writer.start()
        # The writer commits while the reader's transaction is still open (a write lock would hold it).
        assert written.wait(10), "a writer waited for a read-only unit of work"
        assert reader.audit.head() == before  # the reader keeps its one snapshot
    writer.join(5)
    with SqlUnitOfWork(store, read_only=True) as later:
        assert later.audit.head()[0] == before[0] + 1


def test_entries_written_by_racing_commits_make_one_chain_that_verifies(store: SqlStore) -> None:
    """PostgreSQL chains each entry itself, in the statements the COMMIT is sent with; SQLite is given them chained.
    Either way, writers racing for the head must leave one unbroken chain: every entry once, in commit order,
    each hash what gateway.domain.audit.chain computes (details with characters JSON escapes or not)."""
    details = ["", 'quote " and back\\slash', "共济 mutual aid", "tab\tnew\nline", "emoji \U0001f91d"]
    failures: list[BaseException] = []

    def write(thread: int) -> None:
        try:
            for commit in range(12):
                with SqlUnitOfWork(store) as uow:
                    for entry in range(1 + (thread + commit) % 3):  # one to three entries a commit
                        uow.audit.record("test", f"s-{thread}-{commit}-{entry}", "WRITTEN", datetime.now(UTC),
                                         details[(thread + commit + entry) % len(details)])
                    uow.commit()
        except BaseException as error:  # reported by the test's thread
            failures.append(error)

    writers = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert not failures, failures[0]

    report = verify_audit(store.unit_of_work, {}, verify_signature)
    assert report.ok, report.findings
    assert report.entries == sum(1 + (thread + commit) % 3 for thread in range(6) for commit in range(12))
    with SqlUnitOfWork(store, read_only=True) as uow:
        entries = uow.audit.entries_after(0, 1000)
    assert {entry.detail for entry in entries} == set(details)
    assert [entry.seq for entry in entries] == list(range(1, report.entries + 1))


def test_a_read_only_unit_of_work_refuses_a_write_and_leaves_its_connection_writable(engine: Engine,
                                                                                        store: SqlStore) -> None:
    """The operators' reads run read-only: a write slipped into one fails and changes nothing, and the pool's
    connection it used writes again in the next unit of work (on PostgreSQL READ COMMITTED, as the others)."""
    with SqlUnitOfWork(store) as uow:  # the pool holds one connection, used by every unit of work below
        uow.provinces.add(xinjiang())
        uow.commit()
    assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]

    with pytest.raises(Exception, match=r"(?i)read.?only"), SqlUnitOfWork(store, read_only=True) as reader:
        reader.provinces.add(gansu())

    with SqlUnitOfWork(store) as uow:
        assert uow.provinces.get("620000") is None
        uow.provinces.add(gansu())
        if not store.is_sqlite:
            isolation = uow._cursor._cursor.execute("SHOW transaction_isolation").fetchone()[0]  # type: ignore[union-attr]
            assert isolation == "read committed"
        uow.commit()
    with SqlUnitOfWork(store, read_only=True) as reader:
        assert reader.provinces.get("620000") is not None
    assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    if not store.is_sqlite:  # a unit of work says its own BEGIN on psycopg in autocommit: the pool's is not
        with engine.connect() as conn:
            assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]


def test_a_connection_the_database_ended_is_replaced_and_never_handed_out_twice(
        engine: Engine, store: SqlStore, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart of PostgreSQL (here: its backend terminated) ends the pool's connections. One left idle is checked
    before it is handed out and replaced unseen; one used a moment ago fails the unit of work that finds it, and is
    dropped: the next unit of work has a new connection."""
    if not db_url.startswith("postgresql"):
        pytest.skip("a SQLite connection is a file's: no server ends it")
    import psycopg

    def backend() -> int:
        with SqlUnitOfWork(store) as uow:
            return int(uow._cursor._cursor.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[union-attr]

    def terminate(pid: int) -> None:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))

    monkeypatch.setattr(engine_module, "IDLE_CHECK_SECONDS", 0.0)  # every connection counts as idle: checked
    first = backend()
    terminate(first)
    second = backend()
    assert second != first and engine.pool.checkedin() == 1  # type: ignore[attr-defined]

    monkeypatch.setattr(engine_module, "IDLE_CHECK_SECONDS", 3600.0)  # none counts as idle: none checked
    terminate(second)
    with pytest.raises(DatabaseUnavailable) as lost, SqlUnitOfWork(store, read_only=True) as uow:
        uow.transfers.last_change()
    # The call's answer: UNAVAILABLE with a stable reason (retry with the same message_id), not an internal error.
    assert lost.value.reason == reasons.DATABASE_UNAVAILABLE and isinstance(lost.value.__cause__, psycopg.Error)
    third = backend()
    assert third not in (first, second) and engine.pool.checkedin() == 1  # type: ignore[attr-defined]


def test_a_database_that_cannot_be_reached_is_said_unavailable(db_url: str) -> None:
    """No server where the URL points (here: a closed port): the unit of work fails DATABASE_UNAVAILABLE (UNAVAILABLE
    for the caller), having opened nothing."""
    if not db_url.startswith("postgresql"):
        pytest.skip("a SQLite database is a local file")
    unreachable = make_engine("postgresql://postgres@127.0.0.1:9/test")  # the discard port: nothing listens
    try:
        with pytest.raises(DatabaseUnavailable) as refused, SqlUnitOfWork(SqlStore(unreachable, NoSealer())):
            pass
        assert refused.value.reason == reasons.DATABASE_UNAVAILABLE
        assert status_code_for(refused.value) is grpc.StatusCode.UNAVAILABLE
    finally:
        unreachable.dispose()


def test_a_taken_transfer_id_is_reported_not_raised(engine: Engine, store: SqlStore) -> None:
    """Ids are unique per sender only, so another province may already hold one: add says so and stores
    nothing (the use case answers TRANSFER_ID_TAKEN), rather than failing on the primary key."""
    first = transfer()
    add_transfers(store, first)
    before = (count(engine, transfers_t), count(engine, events_t))
    with SqlUnitOfWork(store) as uow:
        assert uow.transfers.add(transfer(first.transfer_id, amount_fen=1), b"\x03" * 32, b"\x04" * 32,
                                 envelope()) is False
        uow.commit()
    assert (count(engine, transfers_t), count(engine, events_t)) == before
    with SqlUnitOfWork(store) as uow:
        stored = uow.transfers.get(first.transfer_id)
    assert stored is not None and stored.amount_fen == first.amount_fen


@POSTGRES_ONLY
def test_two_provinces_racing_for_one_transfer_id_get_one_transfer_and_one_answer(engine: Engine,
                                                                                 store: SqlStore) -> None:
    transfer_id = uid("tr")

    def second_add() -> bool:
        with SqlUnitOfWork(store) as uow:
            added = uow.transfers.add(transfer(transfer_id, amount_fen=2), b"\x03" * 32, b"\x04" * 32, envelope())
            uow.commit()
        return added

    with SqlUnitOfWork(store) as first:
        assert first.transfers.add(transfer(transfer_id), b"\x01" * 32, b"\x02" * 32, envelope()) is True
        thread, outcome = in_thread(second_add)
        wait_until(lambda: waiting_on_a_lock(engine), timeout=10, what="the second insert to wait on the first")
        first.commit()
    assert result_of(thread, outcome) is False  # it waited, then found the id taken: no unique-key error
    with SqlUnitOfWork(store) as uow:
        stored = uow.transfers.get(transfer_id)
    assert stored is not None and stored.amount_fen == 50_000


def binding(binding_id: str, authorised_amount_fen: int = 0) -> Binding:
    return Binding(binding_id=binding_id, state=BindingState.ACTIVE, giver_province="650000",
                   receiver_province="620000", giver_id_masked="650502********1230",
                   receiver_id_masked="620102********0026", relation_code="52",
                   authorised_amount_fen=authorised_amount_fen,
                   consent_by=T0 + timedelta(days=1), created_at=T0, updated_at=T0, proposal_sha256=SHA_A,
                   giver_ref=b"\x01" * 32, receiver_ref=b"\x02" * 32)


def test_a_taken_binding_id_is_reported_not_raised(store: SqlStore) -> None:
    binding_id = uid("b")
    with SqlUnitOfWork(store) as uow:
        assert uow.bindings.add(binding(binding_id, 100), envelope()) is True
        assert uow.bindings.add(binding(binding_id, 999), envelope()) is False
        uow.commit()
    with SqlUnitOfWork(store) as uow:
        stored = uow.bindings.get(binding_id)
    assert stored is not None and stored.authorised_amount_fen == 100


@POSTGRES_ONLY
def test_a_locked_binding_is_read_by_one_submission_at_a_time(engine: Engine, store: SqlStore) -> None:
    """D10's used amount is read, checked and added to under the binding's row lock."""
    binding_id = uid("b")
    with SqlUnitOfWork(store) as uow:
        uow.bindings.add(binding(binding_id, 100_000), envelope())
        uow.commit()

    def second_submission() -> int:
        with SqlUnitOfWork(store) as uow:
            locked = uow.bindings.get(binding_id, lock=True)
            assert locked is not None
            return locked.used_amount_fen

    with SqlUnitOfWork(store) as first:
        assert first.bindings.get(binding_id, lock=True) is not None
        thread, outcome = in_thread(second_submission)
        wait_until(lambda: waiting_on_a_lock(engine), timeout=10, what="the second reader to wait on the lock")
        first.transfers.add(transfer(binding_id=binding_id, amount_fen=60_000), b"\x01" * 32, b"\x02" * 32,
                            envelope())
        first.bindings.add_used(binding_id, 60_000)
        first.commit()
    assert result_of(thread, outcome) == 60_000  # it read the amount the first one added, not the one before


def test_a_bindings_used_amount_added_in_a_transaction_is_read_back_in_it(store: SqlStore) -> None:
    """add_used is sent with the commit (no round trip of its own); a read of the binding before then sees it."""
    binding_id = uid("b")
    with SqlUnitOfWork(store) as uow:
        uow.bindings.add(binding(binding_id, 100_000), envelope())
        uow.commit()
    with SqlUnitOfWork(store) as uow:
        uow.bindings.add_used(binding_id, 60_000)
        locked = uow.bindings.get(binding_id, lock=True)
        assert locked is not None and locked.used_amount_fen == 60_000
        uow.bindings.add_used(binding_id, -10_000)
        assert [b.used_amount_fen for b in uow.bindings.of_person(b"\x01" * 32) if b.binding_id == binding_id] == [
            50_000]
        uow.bindings.add_used(binding_id, 5_000)
        assert [b.used_amount_fen for b in uow.bindings.page("650000", [BindingState.ACTIVE], None, 100)
                if b.binding_id == binding_id] == [55_000]
        uow.bindings.add_used(binding_id, 1_000)  # read by nobody before the commit
        uow.commit()
    with SqlUnitOfWork(store) as uow:
        stored = uow.bindings.get(binding_id)
        assert stored is not None and stored.used_amount_fen == 56_000
    with SqlUnitOfWork(store) as uow:  # rolled back: nothing of it
        uow.bindings.add_used(binding_id, 7_000)
    with SqlUnitOfWork(store) as uow:
        stored = uow.bindings.get(binding_id)
        assert stored is not None and stored.used_amount_fen == 56_000


def test_a_submissions_facts_read_together_are_what_each_read_alone_says(store: SqlStore) -> None:
    """SubmissionReads sends four reads in one batch on PostgreSQL: each answer is its own statement's, in order,
    and the day's count stays counted."""
    binding_id, giver, receiver, day = uid("b"), b"\x01" * 32, b"\x02" * 32, T0.date()
    taken = transfer()
    add_transfers(store, taken)
    with SqlUnitOfWork(store) as uow:
        uow.bindings.add(binding(binding_id, 100_000), envelope())
        uow.members.suspend(receiver, "620000", T0)
        uow.commit()

    with SqlUnitOfWork(store) as uow:
        first = uow.submissions.read(uid("tr"), giver, "650000", receiver, "620000", day, binding_id)
        second = uow.submissions.read(taken.transfer_id, giver, "650000", receiver, "620000", day, uid("b"))
        uow.commit()
    assert (first.transfer_id_taken, first.earlier_today, first.suspended_party) == (False, 0, "receiver")
    assert first.binding is not None and first.binding.binding_id == binding_id and first.binding.used_amount_fen == 0
    assert (second.transfer_id_taken, second.earlier_today, second.binding, second.suspended_party) == (
        True, 1, None, "receiver")
    with SqlUnitOfWork(store) as uow:
        assert uow.transfers.reserve_daily_slot(giver, day) == 2  # both reads counted the day


def test_a_suspended_party_is_named_only_as_a_member_of_the_province_given_beside_them(store: SqlStore) -> None:
    """D3, D20: both parties looked up in one statement; the giver is named first when both are suspended."""
    giver, receiver = b"\x0a" * 32, b"\x0b" * 32

    def named() -> str | None:
        with SqlUnitOfWork(store) as uow:
            return uow.members.suspended_party(giver, "650000", receiver, "620000")

    assert named() is None
    with SqlUnitOfWork(store) as uow:  # suspended by other provinces than the ones they are members of here
        uow.members.suspend(giver, "620000", T0)
        uow.members.suspend(receiver, "650000", T0)
        uow.commit()
    assert named() is None
    with SqlUnitOfWork(store) as uow:
        uow.members.suspend(receiver, "620000", T0)
        uow.commit()
    assert named() == "receiver"
    with SqlUnitOfWork(store) as uow:
        uow.members.suspend(giver, "650000", T0)
        uow.commit()
    assert named() == "giver"
    with SqlUnitOfWork(store) as uow:
        uow.members.resume(giver, "650000")
        uow.members.resume(receiver, "620000")
        uow.commit()
    assert named() is None


def test_the_repositories_count_only_what_they_are_told(store: SqlStore) -> None:
    """What a transfer counts against (D10, D12) is the use cases' rule: storing a transfer and failing it
    add to no binding and no day, and take from none; add_used and the daily slots do exactly that."""
    binding_id, giver_ref = uid("b"), b"\x07" * 32
    item = transfer(binding_id=binding_id, amount_fen=60_000)
    day = item.created_at.astimezone(BEIJING).date()

    def used() -> int:
        stored = uow.bindings.get(binding_id)
        assert stored is not None
        return stored.used_amount_fen

    with SqlUnitOfWork(store) as uow:
        uow.bindings.add(binding(binding_id, 100_000), envelope())
        assert uow.transfers.add(item, giver_ref, b"\x02" * 32, envelope())
        assert used() == 0
        assert uow.transfers.change_state(item.transfer_id, [TransferState.RECEIVED], TransferState.REJECTED,
                                          "DESTINATION_UNREACHABLE", T0)
        assert used() == 0
        assert uow.transfers.reserve_daily_slot(giver_ref, day) == 0  # no slot was taken, none given back
        uow.bindings.add_used(binding_id, 60_000)
        uow.bindings.add_used(binding_id, -20_000)
        assert used() == 40_000
        assert uow.transfers.reserve_daily_slot(giver_ref, day) == 1
        uow.transfers.release_daily_slot(giver_ref, day)
        assert uow.transfers.reserve_daily_slot(giver_ref, day) == 1
        assert uow.transfers.giver_ref(item.transfer_id) == giver_ref
        assert uow.transfers.giver_ref(uid("tr")) is None
