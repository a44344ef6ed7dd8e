"""Seeding a gateway's database with N committed transfers and their history, as the gateway writes them.

What one committed lifecycle leaves behind (read back from a real one): the transfer (its instruction sealed,
its people as keyed hashes and masked numbers), three events (RECEIVED, DELIVERED, COMMITTED), three outbox
rows acknowledged (the delivery to the receiver's province, the outcome to both), two stored requests with the
gateway's receipts (the instruction, the confirmation), three audit entries chained onto the head; and the
running totals (by pair and state, each destination's outbox, each window's committed figures), the giver's
day, the binding's used amount and the settlement window moved as the gateway moves them. The seeder writes
exactly that, in bulk: one transaction per CHUNK transfers (SQLite: executemany; PostgreSQL: COPY), built
meanwhile by a second process (Lifecycles), each transaction moving the totals, the head of the audit chain and
the rest with its rows, so the database is consistent after every chunk (`gongji db recount` and `gongji audit
verify` agree). The gateway must be stopped meanwhile (the seeder is the only writer).

The transfers are the bench binding's (one giver, one receiver: the binding made through the real flow before
seeding), spread evenly over `windows` daily settlement windows, the newest being the one of now: the older
ones are left OPEN for whoever closes them (bench.scale closes them through the gateway, as its schedule would).
Signatures: with `sign`, every instruction and receipt is signed with the province's and the gateway's real
keys (about 0.3 ms a transfer on this machine); without, the 64 signature bytes are a digest of what would be
signed (the same size, not a valid signature: no read path re-verifies a stored envelope).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import threading
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite

from gateway.domain.envelope import ALG_ED25519, GATEWAY, Envelope
from gateway.domain.identity import mask_id_number
from gateway.domain.outbox import OutboxKind, delivery_message_id, transfer_outcome_message_id
from gateway.domain.policy import beijing_day
from gateway.domain.provinces import NATIONAL_DEFAULTS
from gateway.domain.settlement import SettlementPeriod, WindowSpan, span_of, window_containing
from gateway.domain.transfers import TransferState, delivery_deadline, return_deadline
from gateway.security.encryption import load_or_create_keys
from gateway.security.hashing import HmacPersonHasher, load_or_create_secret
from gateway.security.keys import load_private_key
from gateway.security.signing import EnvelopeSigner, signature_input
from gateway.store.prepared import Cursor, Prepared
from gateway.store.repositories.totals import shard_of
from gateway.store.statements import Statements
from gateway.store.tables import audit_t, events_t, giver_days_t, outbox_t, requests_t, transfers_t
from protos.gongji.v1 import common_pb2, payload_types, transfers_pb2
from province_stub.messages import confirmation_message_id

CHUNK = 20_000
PRODUCER_TIMEOUT_S = 600.0  # the longest wait for the next chunk (a machine busy with others)
# One lifecycle's steps after its arrival, as a real one on this machine took them: delivered, confirmed
# (COMMITTED), both outcomes acknowledged.
DELIVERED_AFTER, COMMITTED_AFTER, NOTIFIED_AFTER = timedelta(milliseconds=6), timedelta(milliseconds=9), \
    timedelta(milliseconds=15)
OUTBOX_LEASE = timedelta(seconds=30)  # a sent message's next attempt, had its answer not come (the lease)
COMMITTED, DONE = TransferState.COMMITTED.value, "DONE"
DELIVER, NOTIFY = OutboxKind.DELIVER_TRANSFER.value, OutboxKind.NOTIFY_TRANSFER_OUTCOME.value
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The tables written in bulk, in the order they are written, each with its columns in the order of its rows
# (every column but the generated ids of events and outbox rows, which the database numbers in order).
COLUMNS = {table.name: tuple(column.name for column in table.columns if column.name != "id")
           for table in (transfers_t, events_t, outbox_t, requests_t, audit_t)}
TABLES = tuple(COLUMNS)


@dataclass(frozen=True)
class Party:
    """The bench binding: who gives to whom (their ID numbers, hashed and masked before anything is written)."""

    binding_id: str
    giver: common_pb2.PersonRef
    receiver: common_pb2.PersonRef
    giver_province: str
    receiver_province: str
    giver_key_id: str
    amount_fen: int = 100


@dataclass(frozen=True)
class Chunk:
    """One transaction's lifecycles: their (arrival, window) and ids, rows by table, the audit head before and
    after them."""

    batch: list[tuple[datetime, str]]
    ids: list[str]
    tables: dict[str, list[tuple[Any, ...]]]
    start: tuple[int, bytes]
    end: tuple[int, bytes]


@dataclass(frozen=True)
class Seeded:
    rows: int
    windows: dict[str, int]  # transfers per window id, oldest first
    seconds: float


class _DigestSigner(EnvelopeSigner):
    """Signs nothing: 64 bytes of SHA-512 over what would be signed (the size of an Ed25519 signature)."""

    def sign(self, payload_type: str, payload: bytes) -> Envelope:
        message = signature_input(payload_type, self.signer, self.key_id, payload)
        return Envelope(payload, payload_type, self.signer, self.key_id, ALG_ED25519, hashlib.sha512(message).digest())


def plan(rows: int, windows: int, now: datetime) -> list[tuple[WindowSpan, int]]:
    """`rows` spread evenly over `windows` daily windows ending with the one of now, oldest first."""
    current = window_containing(now, SettlementPeriod.DAILY)
    first_day = date.fromisoformat(current.window_id)
    spans = [span_of((first_day - timedelta(days=back)).isoformat()) for back in range(windows - 1, -1, -1)]
    return [(span, rows // windows + (1 if index < rows % windows else 0)) for index, span in enumerate(spans)]


def arrivals(span: WindowSpan, count: int, now: datetime) -> Iterator[datetime]:
    """`count` arrival times spread over the window (up to a minute before now for the current one)."""
    end = min(span.closes_at - timedelta(seconds=1), now - timedelta(minutes=1))
    start = span.opens_at + timedelta(seconds=1)
    step = (end - start) / max(1, count)
    for index in range(count):
        yield (start + step * index).astimezone(UTC)  # the gateway's clock is UTC (a span's bounds are Beijing's)


class Lifecycles:
    """Builds the lifecycles' rows, chained onto the audit chain, with the keys in `keys_dir` (the gateway's key
    files and the giver province's key); touches no database (it runs in a process of its own)."""

    def __init__(self, keys_dir: Path, party: Party, *, sign: bool, gateway_key_id: str, postgres: bool) -> None:
        self.party = party
        hasher = HmacPersonHasher(load_or_create_secret(keys_dir / "id-hash.key"))
        self.giver_ref, self.receiver_ref = hasher.ref(party.giver.id_number), hasher.ref(party.receiver.id_number)
        self.cipher = load_or_create_keys(keys_dir / "data.keys")
        signer_class = EnvelopeSigner if sign else _DigestSigner
        self.province = signer_class(party.giver_province, party.giver_key_id,
                                     load_private_key(keys_dir / f"{party.giver_key_id}.key"))
        self.gateway = signer_class(GATEWAY, gateway_key_id, load_private_key(keys_dir / "gateway.key"))
        # Values as the store's column types write them: SQLite's datetimes as its text, PostgreSQL's as they are.
        self._time: Callable[[datetime], Any] = same_time if postgres else sqlite_time
        self.rng = random.Random()  # seeded from the system: a second seeding adds new transfers

    def chunks(self, layout: list[tuple[WindowSpan, int]], now: datetime, size: int, head: bytes) -> Iterator[Chunk]:
        batch: list[tuple[datetime, str]] = []
        for span, count in layout:
            for arrived in arrivals(span, count, now):
                batch.append((arrived, span.window_id))
                if len(batch) == CHUNK:
                    chunk = self._chunk(batch, size, head)
                    size, head = chunk.end
                    yield chunk
                    batch = []
        if batch:
            yield self._chunk(batch, size, head)

    def _chunk(self, batch: list[tuple[datetime, str]], size: int, head: bytes) -> Chunk:
        ids, tables, end = self._lifecycles(batch, size, head)
        return Chunk(batch, ids, tables, (size, head), end)

    def _lifecycles(self, batch: list[tuple[datetime, str]], size: int, head: bytes
                    ) -> tuple[list[str], dict[str, list[tuple[Any, ...]]], tuple[int, bytes]]:
        """The chunk's rows by table (columns as COLUMNS), chained onto the audit head (`size`, `head`), and the
        new head."""
        p, t = self.party, self._time
        tables: dict[str, list[tuple[Any, ...]]] = {name: [] for name in TABLES}
        transfers, events, outbox, requests, audit = (tables[name] for name in TABLES)
        ids: list[str] = []
        policy = NATIONAL_DEFAULTS  # the bench's giver province sets neither
        assert policy.return_hour is not None and policy.delivery_deadline_seconds is not None
        masked = mask_id_number(p.giver.id_number), mask_id_number(p.receiver.id_number)
        for arrived, window_id in batch:
            tid = f"{p.giver_province}-{uuid.UUID(int=self.rng.getrandbits(128), version=4).hex}"
            ids.append(tid)
            delivered, committed, notified = arrived + DELIVERED_AFTER, arrived + COMMITTED_AFTER, \
                arrived + NOTIFIED_AFTER
            instruction = transfers_pb2.TransferInstruction(
                header=common_pb2.Header(message_id=tid, sender=p.giver_province, receiver=p.receiver_province,
                                         created_at=timestamp(arrived)),
                giver=p.giver, receiver=p.receiver, amount_fen=p.amount_fen, currency="CNY",
                binding_id=p.binding_id).SerializeToString()
            envelope = self.province.sign(payload_types.TRANSFER_INSTRUCTION, instruction)
            digest = hashlib.sha256(instruction).digest()
            returns_at = return_deadline(arrived, None, policy.return_hour)
            transfers.append((
                tid, COMMITTED, "", p.giver_province, p.receiver_province, self.giver_ref, self.receiver_ref, *masked,
                p.amount_fen, "CNY", p.binding_id, t(arrived), t(committed), t(returns_at),
                t(delivery_deadline(arrived, policy.delivery_deadline_seconds, returns_at)), digest,
                self.cipher.seal(instruction, b"transfers.instruction_payload:" + tid.encode()), envelope.signer,
                envelope.key_id, envelope.alg, envelope.signature, window_id))
            for state, at in (("RECEIVED", arrived), ("DELIVERED", delivered), (COMMITTED, committed)):
                events.append((tid, state, "", t(at)))
            outcome_id = transfer_outcome_message_id(tid, TransferState.COMMITTED)
            for destination, kind, message_id, state, created, done in (
                    (p.receiver_province, DELIVER, delivery_message_id(tid), "", arrived, delivered),
                    (p.giver_province, NOTIFY, outcome_id, COMMITTED, committed, notified),
                    (p.receiver_province, NOTIFY, outcome_id, COMMITTED, committed, notified)):
                outbox.append((destination, kind, message_id, tid, state, "", DONE, 1, t(created + OUTBOX_LEASE), "",
                               t(created), t(done)))
            confirmation_id = confirmation_message_id(tid, decline=False)
            confirmation = transfers_pb2.TransferConfirmation(
                header=common_pb2.Header(message_id=confirmation_id, sender=p.receiver_province, receiver=GATEWAY,
                                         created_at=timestamp(delivered)),
                transfer_id=tid, decision=transfers_pb2.CONFIRMATION_DECISION_CREDITED).SerializeToString()
            for sender, message_id, payload_type, request_digest, state, at in (
                    (p.giver_province, tid, payload_types.TRANSFER_INSTRUCTION, digest, "RECEIVED", arrived),
                    (p.receiver_province, confirmation_id, payload_types.TRANSFER_CONFIRMATION,
                     hashlib.sha256(confirmation).digest(), COMMITTED, committed)):
                receipt = receipt_bytes(self.gateway, sender, message_id, request_digest, payload_type, tid, state, at)
                requests.append((sender, message_id, payload_type, request_digest, "OK", receipt, None, None, None,
                                 None, t(at)))
            for action, at, detail in (
                    ("RECEIVED", arrived, f"{p.giver_province}->{p.receiver_province} amount_fen={p.amount_fen} "
                                          f"binding={p.binding_id} instruction_sha256={digest.hex()}"),
                    ("DELIVERED", delivered, ""), (COMMITTED, committed, "")):
                size += 1
                entry_hash = hashlib.sha256(head + canonical_entry(size, at, "transfer", tid, action, detail)).digest()
                audit.append((size, t(at), "transfer", tid, action, detail, head, entry_hash))
                head = entry_hash
        return ids, tables, (size, head)



def _produce(queue: Any, keys_dir: Path, party: Party, sign: bool, gateway_key_id: str, postgres: bool,
             layout: list[tuple[WindowSpan, int]], now: datetime, size: int, head: bytes) -> None:
    """The generating process: every chunk onto `queue`, then None (or the error's text)."""
    try:
        for chunk in Lifecycles(keys_dir, party, sign=sign, gateway_key_id=gateway_key_id,
                                postgres=postgres).chunks(layout, now, size, head):
            queue.put(chunk)
        queue.put(None)
    except BaseException:
        queue.put(traceback.format_exc())


class Seeder:
    """Writes the lifecycles a process of its own builds (bench.seed.Lifecycles), one transaction a chunk."""

    def __init__(self, engine: Engine, keys_dir: Path, party: Party, *, sign: bool) -> None:
        self.engine, self.keys_dir, self.party, self.sign = engine, keys_dir, party, sign
        self.postgres = engine.dialect.name == "postgresql"
        self.statements = Statements(engine)
        dialect = engine.dialect
        insert = postgresql.insert if self.postgres else sqlite.insert
        d = giver_days_t.c
        add_day = insert(giver_days_t)
        self.add_giver_days = Prepared(add_day.on_conflict_do_update(
            index_elements=[d.giver_ref, d.day], set_={"count": d.count + add_day.excluded.count}), dialect)
        self.inserts = {name: f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
                        for name, columns in COLUMNS.items()}
        self.giver_ref = HmacPersonHasher(load_or_create_secret(keys_dir / "id-hash.key")).ref(party.giver.id_number)

    def _first(self, sql: str) -> tuple[Any, ...] | None:
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(sql).first()
            conn.rollback()
        return None if row is None else tuple(row)

    def seed(self, rows: int, windows: int, now: datetime | None = None, stop: threading.Event | None = None
             ) -> Seeded:
        """Seed `rows` transfers over `windows` windows: built in a second process while this one writes (two
        cores). `stop` set: stops after the chunk being written (RuntimeError)."""
        started = datetime.now(UTC)
        now = now or started
        layout = plan(rows, windows, now)
        key = self._first("SELECT key_id FROM gateway_keys WHERE valid_until IS NULL ORDER BY valid_from DESC")
        if key is None:
            raise RuntimeError("the database has no gateway key: start the gateway on it once before seeding")
        head = self._first("SELECT size, head_hash FROM audit_head WHERE id = 1")
        assert head is not None, "the schema makes the head row"
        context = multiprocessing.get_context("spawn")  # nothing of this process's threads (gRPC's) is copied
        queue = context.Queue(maxsize=2)
        producer = context.Process(target=_produce, daemon=True, args=(
            queue, self.keys_dir, self.party, self.sign, str(key[0]), self.postgres, layout, now, int(head[0]),
            bytes(head[1])))
        producer.start()
        try:
            while (chunk := queue.get(timeout=PRODUCER_TIMEOUT_S)) is not None:
                if stop is not None and stop.is_set():
                    raise RuntimeError("seeding stopped")
                if isinstance(chunk, str):
                    raise RuntimeError(f"building the lifecycles failed:\n{chunk}")
                self._write(chunk)
        finally:
            producer.terminate()
            producer.join(10)
        return Seeded(rows, {span.window_id: count for span, count in layout},
                      (datetime.now(UTC) - started).total_seconds())

    # -- one chunk, one transaction ------------------------------------------------------------------
    def _write(self, chunk: Chunk) -> None:
        raw = self.engine.raw_connection()
        dbapi: Any = raw.driver_connection
        try:
            cursor = Cursor(dbapi)
            if not self.postgres:
                cursor.raw("PRAGMA cache_size=-1000000")  # 1 GB: the indexes' pages stay in memory while seeding
                cursor.raw("BEGIN IMMEDIATE")
            s = self.statements
            head = cursor.first(s.audit_head_for_append)
            if head is None or (int(head[0]), bytes(head[1])) != chunk.start:
                raise RuntimeError("the audit chain moved while seeding: the gateway must be stopped")
            self._bulk(dbapi, chunk.tables)
            size, head_hash = chunk.end
            cursor.run(s.move_audit_head, size=size, head_hash=head_hash)
            self._totals(cursor, chunk.batch, chunk.ids)
            if self.postgres:
                dbapi.commit()
            else:
                cursor.raw("COMMIT")
        except BaseException:
            if self.postgres:
                dbapi.rollback()
            else:
                Cursor(dbapi).raw("ROLLBACK")
            raise
        finally:
            raw.close()

    def _bulk(self, dbapi: Any, tables: dict[str, list[tuple[Any, ...]]]) -> None:
        for name in TABLES:
            if not self.postgres:
                dbapi.executemany(self.inserts[name], tables[name])
                continue
            with dbapi.cursor() as pg, pg.copy(f"COPY {name} ({', '.join(COLUMNS[name])}) FROM STDIN") as copy:
                for row in tables[name]:
                    copy.write_row(row)

    def _totals(self, cursor: Cursor, batch: list[tuple[datetime, str]], ids: list[str]) -> None:
        """The running totals, the giver's days, the binding and the windows, moved by the chunk's lifecycles."""
        p, s = self.party, self.statements
        shards = Counter(shard_of(tid) for tid in ids)
        windows = Counter((window_id, shard_of(tid)) for (_, window_id), tid in zip(batch, ids, strict=True))
        cursor.run_many(s.totals.add_settlement, [
            {"window_id": window_id, "giver_province": p.giver_province, "receiver_province": p.receiver_province,
             "shard": shard, "count": count, "amount_fen": count * p.amount_fen}
            for (window_id, shard), count in sorted(windows.items())])
        cursor.run_many(s.totals.add_transfer, [
            {"giver_province": p.giver_province, "receiver_province": p.receiver_province, "state": COMMITTED,
             "shard": shard, "count": count, "amount_fen": count * p.amount_fen}
            for shard, count in sorted(shards.items())])
        outbox: Counter[tuple[str, int]] = Counter()
        for tid in ids:
            outbox[(p.receiver_province, shard_of(delivery_message_id(tid)))] += 1
            outcome = transfer_outcome_message_id(tid, TransferState.COMMITTED)
            outbox[(p.giver_province, shard_of(outcome))] += 1
            outbox[(p.receiver_province, shard_of(outcome))] += 1
        cursor.run_many(s.totals.add_outbox, [
            {"destination": destination, "shard": shard, "pending": 0, "attempts": count, "done": count}
            for (destination, shard), count in sorted(outbox.items())])
        days = Counter(beijing_day(arrived) for arrived, _ in batch)
        cursor.run_many(self.add_giver_days, [{"giver_ref": self.giver_ref, "day": day, "count": count}
                                              for day, count in sorted(days.items())])
        cursor.run(s.add_used, w_id=p.binding_id, amount=len(batch) * p.amount_fen)
        for window_id in sorted({window_id for _, window_id in batch}):
            span = span_of(window_id)
            last = max(arrived for arrived, w in batch if w == window_id) + COMMITTED_AFTER
            cursor.run(s.ensure_window, window_id=window_id, opens_at=span.opens_at, closes_at=span.closes_at, at=last)


def timestamp(at: datetime) -> timestamp_pb2.Timestamp:
    """gateway.wire.timestamp, without its datetime conversions (a UTC `at`)."""
    delta = at - EPOCH
    return timestamp_pb2.Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


def receipt_bytes(signer: EnvelopeSigner, sender: str, message_id: str, request_sha256: bytes, payload_type: str,
                  subject_id: str, state: str, at: datetime) -> bytes:
    """SignedReceiptIssuer.issue's bytes, built faster (tests/unit/test_bench_seed.py holds them equal)."""
    stamp = timestamp(at)
    receipt = common_pb2.Receipt(
        header=common_pb2.Header(message_id=f"rcpt:{sender}:{message_id}", sender=GATEWAY, receiver=sender,
                                 created_at=stamp),
        request_sender=sender, request_message_id=message_id, request_sha256=request_sha256,
        request_payload_type=payload_type, subject_id=subject_id, state=state, gateway_time=stamp)
    envelope = signer.sign(payload_types.RECEIPT, receipt.SerializeToString())
    return common_pb2.SignedEnvelope(payload=envelope.payload, payload_type=envelope.payload_type,
                                     signer=envelope.signer, key_id=envelope.key_id, alg=envelope.alg,
                                     signature=envelope.signature).SerializeToString()


def canonical_entry(seq: int, at: datetime, kind: str, subject_id: str, action: str, detail: str) -> bytes:
    """gateway.domain.audit.canonical's bytes for values JSON needs not escape (the seeder's own ASCII ids and
    details; tests/unit/test_bench_seed.py holds them equal)."""
    return f'[{seq},"{at.isoformat(timespec="microseconds")}","{kind}","{subject_id}","{action}","{detail}"]'.encode()


def sqlite_time(at: datetime) -> str:
    """A UTC datetime as SQLAlchemy stores it in SQLite (text, naive UTC, microseconds)."""
    return at.isoformat(sep=" ", timespec="microseconds")[:26]


def same_time(at: datetime) -> datetime:
    return at
