"""The end-of-run accounting: every accepted transfer committed once and told to both provinces once."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc.aio

from bench.procs import BenchError
from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import transfers_pb2

COMMITTED = transfers_pb2.TRANSFER_STATE_COMMITTED
# A snapshot of tens of thousands of transfers exceeds gRPC's default 4 MiB message limit.
CONTROL_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]


@dataclass
class Outcomes:
    """What one stub was told: per transfer, its distinct outcome notifications."""

    province: str
    by_transfer: dict[str, list[control_pb2.Notification]]
    credits: Counter[str]
    credit_status: dict[str, int]
    deliveries_received: int

    @classmethod
    def of(cls, snapshot: control_pb2.SnapshotResponse) -> Outcomes:
        by_transfer: dict[str, list[control_pb2.Notification]] = defaultdict(list)
        for notification in snapshot.notifications:
            if notification.transfer_id:  # binding outcomes (the bench's own binding) are not transfers
                by_transfer[notification.transfer_id].append(notification)
        return cls(
            province=snapshot.province,
            by_transfer=dict(by_transfer),
            credits=Counter(credit.transfer_id for credit in snapshot.credits),
            credit_status=dict(Counter(credit.status for credit in snapshot.credits)),
            deliveries_received=snapshot.deliveries_received,
        )

    def committed_at(self, transfer_id: str) -> float | None:
        """When COMMITTED first arrived here for this transfer (unix seconds), else None."""
        times = [n.received_at for n in self.by_transfer.get(transfer_id, ()) if n.state == COMMITTED]
        return min(times) if times else None


class Stubs:
    """Reads both stubs' StubControl.Snapshot."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        self._channels = {
            province: grpc.aio.insecure_channel(address, options=CONTROL_CHANNEL_OPTIONS)
            for province, address in addresses.items()
        }

    async def outcomes(self) -> dict[str, Outcomes]:
        async def one(channel: grpc.aio.Channel) -> Outcomes:
            stub = control_pb2_grpc.StubControlStub(channel)
            return Outcomes.of(await stub.Snapshot(control_pb2.SnapshotRequest(), timeout=30))

        provinces = list(self._channels)
        try:
            answers = await asyncio.gather(*(one(self._channels[p]) for p in provinces))
        except grpc.aio.AioRpcError as error:
            raise BenchError(f"a stub's Snapshot failed: {error.code().name} {error.details()}") from error
        return dict(zip(provinces, answers, strict=True))

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)


def completed(outcomes: Mapping[str, Outcomes], transfer_id: str) -> float | None:
    """When the last of the provinces was told COMMITTED, or None if one has not been yet."""
    times = [o.committed_at(transfer_id) for o in outcomes.values()]
    if any(t is None for t in times):
        return None
    return max(t for t in times if t is not None)


async def drain(
    stubs: Stubs, accepted: Collection[str], timeout_s: float
) -> tuple[dict[str, Outcomes], float]:
    """Poll the stubs until every accepted transfer was told to both (or `timeout_s`); answer the
    last snapshots and how long the drain took. Polls once a second: a snapshot costs the stub CPU."""
    start = time.monotonic()
    while True:
        outcomes = await stubs.outcomes()
        pending = sum(1 for transfer_id in accepted if completed(outcomes, transfer_id) is None)
        waited = time.monotonic() - start
        if pending == 0 or waited >= timeout_s:
            return outcomes, waited
        await asyncio.sleep(1.0)


@dataclass
class Database:
    """The gateway's SQLite file as read (read-only) at the end of the run."""

    states: dict[str, str]
    committed_events: Counter[str]
    outbox_status: dict[str, int]
    outbox_duplicates: int

    @classmethod
    def read(cls, path: Path) -> Database:
        try:
            return cls._read(path)
        except sqlite3.Error as error:
            raise BenchError(f"reading the gateway's database {path.name} failed: {error}") from error

    @classmethod
    def _read(cls, path: Path) -> Database:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            states = dict(connection.execute("SELECT transfer_id, state FROM transfers").fetchall())
            committed_events = Counter(
                row[0]
                for row in connection.execute(
                    "SELECT transfer_id FROM transfer_events WHERE state = 'COMMITTED'"
                )
            )
            outbox_status = dict(connection.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status"))
            # Two messages of one kind to one province about one subject would be told twice.
            outbox_duplicates = connection.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM outbox GROUP BY destination, kind, subject_id"
                " HAVING COUNT(*) > 1)"
            ).fetchone()[0]
        finally:
            connection.close()
        return cls(states, committed_events, outbox_status, int(outbox_duplicates))


@dataclass
class Accounting:
    """lost / duplicated with their breakdown; `duplicated` counts doubled effects only."""

    lost: int = 0
    duplicated: int = 0
    redelivered: int = 0
    lost_detail: dict[str, int] = field(default_factory=dict)
    duplicated_detail: dict[str, int] = field(default_factory=dict)
    redelivered_detail: dict[str, int] = field(default_factory=dict)
    db_states: dict[str, int] = field(default_factory=dict)
    outbox_status: dict[str, int] = field(default_factory=dict)
    outbox_pending: int = 0
    refused_but_stored: int = 0
    stub_credit_status: dict[str, dict[str, int]] = field(default_factory=dict)


def account(
    submitted: Iterable[str], accepted: Collection[str], db: Database, outcomes: Mapping[str, Outcomes]
) -> Accounting:
    submitted_set = set(submitted)
    result = Accounting(db_states=dict(Counter(db.states.values())), outbox_status=db.outbox_status)
    result.outbox_pending = db.outbox_status.get("PENDING", 0)
    result.stub_credit_status = {p: o.credit_status for p, o in outcomes.items() if o.credit_status}

    not_in_db = [t for t in accepted if t not in db.states]
    not_committed = [t for t in accepted if t in db.states and db.states[t] != "COMMITTED"]
    not_notified = {
        province: sum(1 for t in accepted if o.committed_at(t) is None) for province, o in outcomes.items()
    }
    lost = {t for t in accepted if t not in db.states or db.states[t] != "COMMITTED"}
    lost |= {t for t in accepted if completed(outcomes, t) is None}
    result.lost = len(lost)
    result.lost_detail = {
        "not_in_db": len(not_in_db),
        "not_committed_in_db": len(not_committed),
        **{f"not_notified_committed_{p}": n for p, n in not_notified.items()},
    }
    # Answered with an error yet stored: not lost (the province was told "no"), but worth seeing.
    result.refused_but_stored = sum(1 for t in db.states if t in submitted_set and t not in accepted)

    dup = {
        "db_unknown_transfers": sum(1 for t in db.states if t not in submitted_set),
        "db_committed_twice": sum(1 for n in db.committed_events.values() if n > 1),
        "outbox_same_message_twice": db.outbox_duplicates,
    }
    redelivered: dict[str, int] = {}
    for province, o in outcomes.items():
        dup[f"credited_twice_{province}"] = sum(1 for n in o.credits.values() if n > 1)
        dup[f"credits_unknown_{province}"] = sum(1 for t in o.credits if t not in submitted_set)
        # Two distinct outcome messages for one transfer would be two effects (e.g. freed twice).
        dup[f"told_twice_{province}"] = sum(1 for ns in o.by_transfer.values() if len(ns) > 1)
        dup[f"told_unknown_{province}"] = sum(1 for t in o.by_transfer if t not in submitted_set)
        # The same message arriving again is at-least-once delivery, de-duplicated by message_id.
        redelivered[f"notify_{province}"] = sum(
            n.times_received - 1 for ns in o.by_transfer.values() for n in ns
        )
        if o.credits:
            redelivered[f"deliver_{province}"] = max(0, o.deliveries_received - len(o.credits))
    result.duplicated = sum(dup.values())
    result.duplicated_detail = dup
    result.redelivered = sum(redelivered.values())
    result.redelivered_detail = redelivered
    return result
