"""The end of a crash or fault run: the database and both provinces agree, nothing lost, nothing doubled."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

from gateway.domain.audit import VerifyReport
from gateway.security.encryption import load_or_create_keys
from gateway.security.keys import load_public_key
from gateway.security.signing import verify_signature
from gateway.store.engine import make_engine
from gateway.store.unit_of_work import SqlStore
from gateway.usecases.audit import verify_audit
from gateway.usecases.monitoring import recount_totals
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import transfers_pb2
from scripts.launcher import GANSU, ROOT, XINJIANG
from tests.crash.driver import Driver
from tests.crash.harness import Deployment

SETTLE_TIMEOUT_S = 60.0
FINAL = frozenset({"COMMITTED", "DECLINED", "RETURNED", "REJECTED"})
CREDIT_AFTER = {"COMMITTED": "CREDITED", "DECLINED": "DECLINED", "RETURNED": "RETURNED", "REJECTED": "REJECTED"}


def read_engine(db_url: str) -> Engine:
    """An engine that only reads: SQLite opened read-only (the gateway may still be writing), PostgreSQL as is."""
    if db_url.startswith("sqlite:///"):
        path = db_url.removeprefix("sqlite:///")
        return create_engine("sqlite://", creator=lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                                          timeout=30, check_same_thread=False))
    return create_engine("postgresql+psycopg://" + db_url.removeprefix("postgresql://"), pool_size=1)


@dataclass
class OutboxRow:
    id: int
    destination: str
    kind: str
    message_id: str
    subject_id: str
    status: str
    attempts: int
    next_attempt_at: datetime
    done_at: datetime | None
    last_error: str


@dataclass
class DbView:
    """What the gateway's database holds about transfers, their outbox messages and the audit chain."""

    states: dict[str, str]
    reasons: dict[str, str]
    events: dict[str, list[str]]
    outbox: list[OutboxRow]
    audit_entries: int
    audit_transfer_entries: int

    @classmethod
    def read(cls, db_url: str) -> DbView:
        engine = read_engine(db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT transfer_id, state, reason FROM transfers")).all()
                events: dict[str, list[str]] = defaultdict(list)
                for transfer_id, state in conn.execute(
                        text("SELECT transfer_id, state FROM transfer_events ORDER BY id")).all():
                    events[transfer_id].append(state)
                outbox = [OutboxRow(*row) for row in conn.execute(text(
                    "SELECT id, destination, kind, message_id, subject_id, status, attempts, next_attempt_at,"
                    " done_at, last_error FROM outbox ORDER BY id")).all()]
                audit: dict[str, int] = dict(conn.execute(text(
                    "SELECT kind, count(*) FROM audit_log GROUP BY kind")).all())
        finally:
            engine.dispose()
        return cls({t: s for t, s, _ in rows}, {t: r for t, _, r in rows}, dict(events), outbox,
                   sum(audit.values()), audit.get("transfer", 0))

    def pending_outbox(self) -> int:
        return sum(1 for row in self.outbox if row.status == "PENDING")

    def deliveries(self, transfer_ids: Collection[str]) -> list[OutboxRow]:
        wanted = set(transfer_ids)
        return [row for row in self.outbox if row.kind == "DELIVER_TRANSFER" and row.subject_id in wanted]


def snapshots(deployment: Deployment) -> dict[str, control_pb2.SnapshotResponse]:
    return {code: deployment.snapshot(code) for code in (XINJIANG, GANSU)}


def told(snapshot: control_pb2.SnapshotResponse) -> dict[str, list[control_pb2.Notification]]:
    """Transfer outcomes a province was told, by transfer (one entry per distinct message)."""
    by_transfer: dict[str, list[control_pb2.Notification]] = defaultdict(list)
    for notification in snapshot.notifications:
        if notification.transfer_id:
            by_transfer[notification.transfer_id].append(notification)
    return by_transfer


def state_name(state: int) -> str:
    return transfers_pb2.TransferState.Name(state).removeprefix("TRANSFER_STATE_")  # type: ignore[arg-type]


def settled(db: DbView, told_by_province: Mapping[str, Mapping[str, list[control_pb2.Notification]]],
            transfer_id: str) -> bool:
    """Final in the database, and both provinces told that final state."""
    state = db.states.get(transfer_id)
    if state not in FINAL:
        return False
    return all(any(state_name(n.state) == state for n in by_transfer.get(transfer_id, ()))
               for by_transfer in told_by_province.values())


@dataclass
class Settling:
    db: DbView
    snapshots: dict[str, control_pb2.SnapshotResponse]
    seconds: float


def settle(deployment: Deployment, expected: Collection[str], timeout_s: float) -> Settling:
    """Until every expected transfer is final, both provinces were told, and the outbox owes nothing
    (bounded by `timeout_s`). Nothing is resent on anyone's behalf: the receiver's stub resends its own
    confirmations until the delivery's confirm_by (province_stub/confirmer.py), across gateway restarts.
    """
    started = time.monotonic()
    while True:
        db = DbView.read(deployment.db_url)
        snaps = snapshots(deployment)
        told_by = {code: told(snap) for code, snap in snaps.items()}
        pending = [t for t in expected if not settled(db, told_by, t)]
        waited = time.monotonic() - started
        # And nothing owed any more: a message the stub got but whose answer a killed process never
        # recorded goes out again once its lease runs out (a redelivery, de-duplicated by message_id).
        if not pending and not db.pending_outbox():
            return Settling(db, snaps, waited)
        if waited > timeout_s:
            states = Counter(db.states.get(t, "ABSENT") for t in pending)
            raise AssertionError(
                f"{len(pending)} of {len(expected)} transfers not final and told to both provinces after "
                f"{timeout_s:.0f}s (database states of those: {dict(states)}; outbox pending "
                f"{db.pending_outbox()})\n{deployment.tails()}")
        time.sleep(0.5)


@dataclass
class Accounting:
    """acknowledged / present / doubled / lost with the breakdown; redelivered is allowed and counted."""

    acknowledged: int = 0
    present: int = 0
    doubled: int = 0
    lost: int = 0
    redelivered: int = 0
    final_states: dict[str, int] = field(default_factory=dict)
    lost_detail: dict[str, int] = field(default_factory=dict)
    doubled_detail: dict[str, int] = field(default_factory=dict)
    redelivered_detail: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def problems(self) -> str:
        return (f"lost {self.lost_detail}, doubled {self.doubled_detail}; e.g. {self.examples[:10]}")


def account(submitted: Collection[str], acknowledged: Collection[str], db: DbView,
            snaps: Mapping[str, control_pb2.SnapshotResponse]) -> Accounting:
    """Every acknowledged transfer present once, final, and told to both provinces in that final state once;
    nothing the driver did not submit; no state entered twice; no message owed twice; no credit doubled."""
    submitted_set, acknowledged_set = set(submitted), set(acknowledged)
    result = Accounting(acknowledged=len(acknowledged_set))
    result.present = sum(1 for t in acknowledged_set if t in db.states)
    result.final_states = dict(Counter(db.states[t] for t in acknowledged_set if t in db.states))
    told_by = {code: told(snap) for code, snap in snaps.items()}

    def flag(bucket: dict[str, int], name: str, ids: list[str]) -> None:
        bucket[name] = len(ids)
        result.examples.extend(f"{name}: {t}" for t in ids[:3])

    lost: dict[str, int] = {}
    flag(lost, "not_in_db", [t for t in acknowledged_set if t not in db.states])
    flag(lost, "not_final", [t for t in acknowledged_set if t in db.states and db.states[t] not in FINAL])
    for code, by_transfer in told_by.items():
        flag(lost, f"not_told_{code}", [t for t in acknowledged_set if db.states.get(t) in FINAL and not any(
            state_name(n.state) == db.states[t] for n in by_transfer.get(t, ()))])
    credits = {c.transfer_id: c for c in snaps[GANSU].credits}
    flag(lost, "committed_not_credited", [t for t in acknowledged_set if db.states.get(t) == "COMMITTED" and (
        t not in credits or credits[t].status != "CREDITED")])
    result.lost_detail = lost
    result.lost = len({t for t in acknowledged_set if t not in db.states or not settled(db, told_by, t)
                       or (db.states[t] == "COMMITTED" and (t not in credits or credits[t].status != "CREDITED"))})

    doubled: dict[str, int] = {}
    flag(doubled, "db_transfers_never_submitted", [t for t in db.states if t not in submitted_set])
    flag(doubled, "state_entered_twice", [t for t, states in db.events.items() if len(states) != len(set(states))])
    flag(doubled, "two_final_states", [t for t, states in db.events.items() if len(FINAL & set(states)) > 1])
    owed = Counter((row.destination, row.kind, row.subject_id) for row in db.outbox)
    flag(doubled, "outbox_message_owed_twice", [f"{d} {k} {s}" for (d, k, s), n in owed.items() if n > 1])
    for code, by_transfer in told_by.items():
        # Two distinct outcome messages about one transfer would be two effects (e.g. released twice).
        flag(doubled, f"told_twice_{code}", [t for t, ns in by_transfer.items() if len(ns) > 1])
        flag(doubled, f"told_other_than_final_{code}", [t for t, ns in by_transfer.items() if any(
            state_name(n.state) != db.states.get(t) for n in ns)])
    flag(doubled, "credits_never_submitted", [t for t in credits if t not in submitted_set])
    flag(doubled, "credit_disagrees_with_final_state", [t for t, c in credits.items() if db.states.get(t) in FINAL
                                                        and c.status != CREDIT_AFTER[db.states[t]]])
    result.doubled_detail = doubled
    result.doubled = sum(doubled.values())

    # The same message arriving again is at-least-once delivery, de-duplicated by message_id: allowed.
    redelivered = {f"notify_{code}": sum(n.times_received - 1 for ns in by_transfer.values() for n in ns)
                   for code, by_transfer in told_by.items()}
    redelivered["deliver"] = max(0, snaps[GANSU].deliveries_received - len(snaps[GANSU].credits))
    result.redelivered_detail = redelivered
    result.redelivered = sum(redelivered.values())
    return result


@dataclass
class AuditResult:
    ok: bool
    entries: int
    checkpoints: int
    findings: list[str]
    transfer_entries_match_events: bool
    cli: str  # what `gongji audit verify` said, or why it was not run
    # Where the operators' running totals differ from what the rows say ([]: they agree), and `gongji db recount`.
    totals_differences: list[str]
    recount_cli: str


def verify_audit_chain(deployment: Deployment, db: DbView) -> AuditResult:
    """The whole chain recomputed and every checkpoint's signature checked (gateway stopped first)."""
    engine = make_engine(deployment.db_url)
    store = SqlStore(engine, load_or_create_keys(deployment.keys_dir / "data.keys"))
    try:
        report: VerifyReport = verify_audit(store.unit_of_work,
                                            {"gateway-k1": load_public_key(deployment.keys_dir / "gateway.pub")},
                                            verify_signature)
        differences = recount_totals(store.unit_of_work)
    finally:
        engine.dispose()
    events = sum(len(states) for states in db.events.values())
    return AuditResult(report.ok, report.entries, report.checkpoints, [str(f) for f in report.findings],
                       db.audit_transfer_entries == events, _cli_verify(deployment, report.entries), differences,
                       _cli_recount(deployment))


def _cli_recount(deployment: Deployment) -> str:
    """`gongji db recount` as an operator would run it: the same verdict as recount_totals."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")}
    gongji = str(Path(sys.executable).parent / "gongji")
    done = subprocess.run([gongji, "db", "recount", "--database", deployment.db_url, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout) if done.stdout.strip() else {"agree": False, "error": done.stderr[-500:]}
    return "agree" if done.returncode == 0 and report["agree"] else f"DIFFER {report}"


def _cli_verify(deployment: Deployment, entries: int) -> str:
    """`gongji audit verify` as an operator would run it (once the operators' CLI has it): same verdict."""
    gongji = shutil.which("gongji", path=str(Path(sys.executable).parent))
    if gongji is None:
        return "not run: no gongji executable"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")}
    probe = subprocess.run([gongji, "audit", "verify", "--help"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        return "not run: gongji has no `audit verify` yet"
    done = subprocess.run([gongji, "audit", "verify", "--database", deployment.db_url, "--json"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"gongji audit verify failed:\n{done.stdout}\n{done.stderr}"
    report = json.loads(done.stdout)
    assert report["ok"] and report["entries"] == entries, report
    return f"ok entries={report['entries']} checkpoints={report['checkpoints']}"


def finish(deployment: Deployment, driver: Driver, what: str, extra: str = "") -> tuple[Accounting, DbView]:
    """Answers for everything, everything final and told, a graceful stop, then the accounting and the audit."""
    driver.resend_unanswered()
    acknowledged = [s.transfer_id for s in driver.acknowledged]
    snaps = settle(deployment, acknowledged, SETTLE_TIMEOUT_S).snapshots
    for gateway in deployment.gateways:
        if gateway.alive:
            assert gateway.terminate() == 0, gateway.tail()
    db = DbView.read(deployment.db_url)
    result = account(list(driver.submissions), acknowledged, db, snaps)
    audit = verify_audit_chain(deployment, db)
    print(f"fault {what}: acknowledged={result.acknowledged} present={result.present} doubled={result.doubled} "
          f"lost={result.lost} redelivered={result.redelivered} final={result.final_states} {extra}"
          f"answers_lost_then_replayed={driver.stats.replays_on_resend} "
          f"call_codes={dict(driver.stats.codes)} "
          f"audit={'ok' if audit.ok else 'FAILED'} entries={audit.entries}", flush=True)
    assert not driver.stats.unexpected, driver.stats.unexpected[:10]
    assert result.present == result.acknowledged == len(driver.submissions), result.problems()
    assert result.lost == 0 and result.doubled == 0, result.problems()
    assert db.pending_outbox() == 0
    assert audit.ok and audit.transfer_entries_match_events, audit.findings[:5]
    assert audit.totals_differences == [] and audit.recount_cli == "agree", (audit.totals_differences,
                                                                             audit.recount_cli)
    return result, db
