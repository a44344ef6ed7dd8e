"""The end of a quota crash run: every acknowledged call took effect once, every refused one not at all, every
quota conserved (Q3) and released once (Q8), and the giver's province holding what the gateway says."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from sqlalchemy import text

from gateway.domain.outbox import consumption_notice_message_id, quota_notice_message_id, reversal_notice_message_id
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import common_pb2, payload_types, province_pb2, quotas_pb2
from province_stub.messages import ProvinceSigner, header, new_message_id
from province_stub.signing import GATEWAY_SIGNER, load_private_key
from scripts.launcher import CHANNEL_OPTIONS, GANSU, XINJIANG
from tests.crash.checks import read_engine
from tests.crash.harness import GIVER
from tests.crash.quota_load import CONSUME, DISSOLVE, GIVER_BALANCE_FEN, GRANT, REVERSE, Call

Figures = tuple[int, int, int]  # granted, consumed, released


@dataclass
class Change:
    version: int
    change: str
    amount_fen: int
    released_fen: int
    after: Figures
    cause_id: str
    consumption_id: str


@dataclass
class QuotaDb:
    """What the gateway's database holds about quotas, their changes, consumptions, reversals and notices."""

    quotas: dict[str, tuple[Figures, int, bool]]  # figures, version, ended
    changes: dict[str, list[Change]]
    consumptions: list[tuple[str, str, str, str, int, int, int]]  # province, id, ref, binding, asked, drawn, reversed
    reversals: list[tuple[str, str, str, str, int, int]]  # sender, message_id, consumption, binding, amount, released
    binding_states: dict[str, str]
    outbox: list[tuple[str, str, str]]  # destination, kind, message_id
    outbox_pending: int
    audit_quota_entries: int

    @classmethod
    def read(cls, db_url: str) -> QuotaDb:
        engine = read_engine(db_url)
        try:
            with engine.connect() as conn:
                def rows(sql: str) -> list[tuple]:  # type: ignore[type-arg]
                    return [tuple(row) for row in conn.execute(text(sql)).all()]

                quotas = {b: ((g, c, r), v, e is not None) for b, g, c, r, v, e in rows(
                    "SELECT binding_id, granted_fen, consumed_fen, released_fen, version, ended_at FROM quotas")}
                changes: dict[str, list[Change]] = defaultdict(list)
                for b, v, ch, amount, released, g, c, r, cause, consumption in rows(
                        "SELECT binding_id, version, change, amount_fen, released_fen, granted_after_fen,"
                        " consumed_after_fen, released_after_fen, cause_id, consumption_id FROM quota_changes"
                        " ORDER BY binding_id, version"):
                    changes[b].append(Change(v, ch, amount, released, (g, c, r), cause, consumption))
                consumptions = rows("SELECT receiver_province, consumption_id, settlement_ref, binding_id,"
                                    " requested_fen, drawn_fen, reversed_fen FROM consumptions")
                reversals = rows("SELECT sender, message_id, consumption_id, binding_id, amount_fen, released_fen"
                                 " FROM consumption_reversals")
                states = dict(rows("SELECT binding_id, state FROM bindings"))  # type: ignore[arg-type]
                outbox = rows("SELECT destination, kind, message_id, status FROM outbox")
                audit = rows("SELECT count(*) FROM audit_log WHERE kind = 'quota'")[0][0]
        finally:
            engine.dispose()
        return cls(quotas, dict(changes), consumptions, reversals, states,  # type: ignore[arg-type]
                   [(d, k, m) for d, k, m, _ in outbox], sum(1 for *_, s in outbox if s == "PENDING"), audit)


@dataclass
class QuotaAccounting:
    acknowledged: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    lost: dict[str, int] = field(default_factory=dict)
    doubled: dict[str, int] = field(default_factory=dict)
    broken: dict[str, int] = field(default_factory=dict)  # conservation, release, the giver's ledger, GetQuota
    redelivered: int = 0
    # What the run went through, from the database: draws of less than asked, reversals after the binding ended
    # (released to the giver), the unused amounts released when bindings ended.
    partial_draws: int = 0
    late_reversals: int = 0
    released_at_end_fen: int = 0
    examples: list[str] = field(default_factory=list)

    def flag(self, bucket: dict[str, int], name: str, items: list[str]) -> None:
        bucket[name] = len(items)
        self.examples.extend(f"{name}: {item}" for item in items[:3])

    def problems(self) -> str:
        return f"lost {self.lost}, doubled {self.doubled}, broken {self.broken}; e.g. {self.examples[:10]}"


def _replayed_chain(changes: list[Change]) -> list[str]:
    """Each change moves the figures before it by its amount, versions 1..n; a release releases what was unused."""
    problems = []
    g = c = r = 0
    ended = False
    for expected_version, change in enumerate(changes, start=1):
        if change.version != expected_version:
            problems.append(f"version {change.version} where {expected_version} was due")
        available = g - c - r
        if change.change == "GRANTED":
            g += change.amount_fen
        elif change.change == "CONSUMED":
            c += change.amount_fen
        elif change.change == "REVERSED":
            c, r = c - change.amount_fen, r + change.released_fen
            if change.released_fen not in (0, change.amount_fen) or (change.released_fen > 0) != ended:
                problems.append(f"v{change.version}: reversal released {change.released_fen} (ended {ended})")
        elif change.change == "RELEASED":
            if ended or change.amount_fen != available or change.released_fen != available:
                problems.append(f"v{change.version}: released {change.amount_fen} of {available} unused "
                                f"(released before: {ended})")
            r, ended = r + change.amount_fen, True
        else:
            problems.append(f"v{change.version}: {change.change} (this load only raises)")
        if (g, c, r) != change.after or min(g, c, r, g - c - r) < 0:
            problems.append(f"v{change.version}: figures {change.after}, replayed {(g, c, r)}")
    return problems


def told_as(notice: control_pb2.QuotaNoticeReceived, change: Change) -> bool:
    """The notice says what the change did and the figures after it (a release: the unused amount)."""
    g, c, r = change.after
    return (province_pb2.QuotaChange.Name(notice.change), notice.amount_fen, notice.released_fen, notice.version,
            notice.quota.granted_fen, notice.quota.consumed_fen, notice.quota.released_fen,
            notice.quota.available_fen) == (f"QUOTA_CHANGE_{change.change}", change.amount_fen, change.released_fen,
                                            change.version, g, c, r, g - c - r)


def conserved(figures: Figures, available: int | None = None) -> bool:
    g, c, r = figures
    return min(g, c, r) >= 0 and g - c - r >= 0 and (available is None or available == g - c - r)


def get_quota(gateway: str, keys_dir: Path, binding_id: str) -> tuple[common_pb2.QuotaFigures,
                                                                      list[quotas_pb2.ConsumptionRecord]]:
    """GetQuota as the receiver's province asks it, every page."""
    signer = ProvinceSigner(GANSU, f"{GANSU}-k1", load_private_key(keys_dir / f"{GANSU}-k1.key"))
    records: list[quotas_pb2.ConsumptionRecord] = []
    token = ""
    with grpc.insecure_channel(gateway, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary("/gongji.v1.Quotas/GetQuota", request_serializer=None,
                                   response_deserializer=quotas_pb2.GetQuotaResponse.FromString)
        while True:
            query = quotas_pb2.QuotaQuery(header=header(new_message_id("qq"), GANSU, GATEWAY_SIGNER),
                                          binding_id=binding_id, page_size=200, page_token=token)
            envelope = signer.sign(payload_types.QUOTA_QUERY, query.SerializeToString())
            answer = call(quotas_pb2.GetQuotaRequest(query=envelope).SerializeToString(), timeout=30)
            records += answer.consumptions
            if not (token := answer.next_page_token):
                return answer.quota, records


def account_quotas(calls: list[Call], db: QuotaDb, ledger: control_pb2.LedgerResponse,
                   snaps: dict[str, control_pb2.SnapshotResponse],
                   read: dict[str, tuple[common_pb2.QuotaFigures, list[quotas_pb2.ConsumptionRecord]]]
                   ) -> QuotaAccounting:
    """Lost: an acknowledged call without its one effect, or a province not told it. Doubled: an effect twice,
    or of a call refused or never sent. Broken: conservation, a release, the giver's ledger, GetQuota."""
    result = QuotaAccounting()
    sent = {c.key: c for c in calls}
    ok = {kind: [c for c in calls if c.kind == kind and c.outcome == "OK"] for kind in (GRANT, CONSUME, REVERSE,
                                                                                         DISSOLVE)}
    for c in calls:
        (result.acknowledged if c.outcome == "OK" else result.refused)[c.kind] += 1
    consumptions = {row[1]: row for row in db.consumptions}
    reversals = {row[1]: row for row in db.reversals}
    causes = Counter(change.cause_id for chain in db.changes.values() for change in chain)
    notices = {code: {n.message_id: n for n in snap.quota_notices} for code, snap in snaps.items()}
    drawn_notices = {n.message_id: n for n in snaps[XINJIANG].consumption_notices}
    lost, doubled, broken = result.lost, result.doubled, result.broken

    # Every acknowledged call's one effect, as answered.
    result.flag(lost, "consumption_not_in_db", [c.key for c in ok[CONSUME] if c.key not in consumptions])
    result.flag(lost, "consumption_not_as_answered", [c.key for c in ok[CONSUME] if c.key in consumptions and (
        consumptions[c.key][0], consumptions[c.key][2], consumptions[c.key][3], consumptions[c.key][5]) != (
        GANSU, c.settlement_ref, c.binding_id, c.drawn_fen)])
    result.flag(lost, "reversal_not_in_db", [
        c.key for c in ok[REVERSE]
        if c.key not in reversals or reversals[c.key][2:5] != (c.consumption_id, c.binding_id, c.amount_fen)])
    # Each grant raises the quota: one GRANTED change each.
    result.flag(lost, "grant_not_recorded", [c.key for c in ok[GRANT] if causes[c.key] != 1])
    result.flag(lost, "dissolution_not_in_db", [c.key for c in ok[DISSOLVE] if db.binding_states.get(c.binding_id)
                                                != "DISSOLVED"])
    top = {b: max((c.amount_fen for c in ok[GRANT] if c.binding_id == b), default=0) for b in db.quotas}
    result.flag(lost, "granted_not_the_last_grant", [f"{b} {q[0][0]} != {top[b]}" for b, q in db.quotas.items()
                                                     if q[0][0] != top[b]])
    # Every notice owed told: Xinjiang each draw and reversal and release, Gansu every change.
    result.flag(lost, "draw_not_told_giver", [c.key for c in ok[CONSUME] if consumption_notice_message_id(
        GANSU, c.key) not in drawn_notices])
    result.flag(lost, "reversal_not_told_giver", [c.key for c in ok[REVERSE] if reversal_notice_message_id(
        GANSU, c.key) not in drawn_notices])
    result.flag(lost, "change_not_told_receiver", [f"{b} v{ch.version}" for b, chain in db.changes.items()
                                                   for ch in chain if quota_notice_message_id(b, ch.version)
                                                   not in notices[GANSU]])
    result.flag(lost, "release_not_told_giver", [f"{b} v{ch.version}" for b, chain in db.changes.items()
                                                 for ch in chain if ch.change == "RELEASED"
                                                 and quota_notice_message_id(b, ch.version) not in notices[XINJIANG]])
    result.flag(lost, "dissolved_not_released", [c.binding_id for c in ok[DISSOLVE] if c.binding_id in db.quotas
                                                 and not db.quotas[c.binding_id][2]])

    # Nothing twice; nothing of a refused call or of a call never sent.
    refused = {c.key for c in calls if c.outcome not in ("", "OK")}
    result.flag(doubled, "consumption_never_sent", [k for k in consumptions if k not in sent])
    result.flag(doubled, "consumption_of_refused_call", [k for k in consumptions if k in refused])
    result.flag(doubled, "settlement_ref_twice", [r for r, n in Counter(row[2] for row in db.consumptions).items()
                                                  if n > 1])
    result.flag(doubled, "reversal_never_sent", [k for k in reversals if k not in sent])
    result.flag(doubled, "reversal_of_refused_call", [k for k in reversals if k in refused])
    result.flag(doubled, "change_caused_twice", [k for k, n in causes.items() if n > 1])
    result.flag(doubled, "change_of_refused_call", [k for k in causes if k in refused])
    result.flag(doubled, "released_twice", [b for b, chain in db.changes.items()
                                            if sum(ch.change == "RELEASED" for ch in chain) > 1])
    result.flag(doubled, "released_not_dissolved", [b for b, chain in db.changes.items() if any(
        ch.change == "RELEASED" for ch in chain) and db.binding_states.get(b) != "DISSOLVED"])
    result.flag(doubled, "outbox_owed_twice", [f"{d} {m}" for (d, k, m), n in Counter(db.outbox).items() if n > 1])
    # The same notice again is at-least-once delivery, counted once by its message_id: allowed, counted.
    result.redelivered = sum(n.times_received - 1 for code in notices for n in notices[code].values()) + sum(
        n.times_received - 1 for n in drawn_notices.values())

    result.partial_draws = sum(1 for row in db.consumptions if row[5] < row[4])
    result.late_reversals = sum(1 for row in db.reversals if row[5] > 0)
    result.released_at_end_fen = sum(ch.amount_fen for chain in db.changes.values() for ch in chain
                                     if ch.change == "RELEASED")

    # Q3 from the database and from GetQuota; each chain replayed; Q8 once; the giver's ledger; audit per change.
    by_binding: dict[str, list[tuple[str, str, str, str, int, int, int]]] = defaultdict(list)
    for drawn in db.consumptions:
        by_binding[drawn[3]].append(drawn)
    reversed_of: Counter[str] = Counter()
    for back in db.reversals:
        reversed_of[back[2]] += back[4]
    result.flag(broken, "not_conserved_db", [b for b, (f, _, _) in db.quotas.items() if not conserved(f)])
    result.flag(broken, "chain", [f"{b}: {p}" for b, chain in db.changes.items() for p in _replayed_chain(chain)])
    result.flag(broken, "chain_not_the_quota", [b for b, (f, v, _) in db.quotas.items()
                                                if not db.changes.get(b) or (db.changes[b][-1].after, db.changes[b][-1]
                                                                             .version) != (f, v)])
    result.flag(broken, "consumed_not_the_draws", [b for b, (f, _, _) in db.quotas.items() if f[1] != sum(
        row[5] - row[6] for row in by_binding[b])])
    result.flag(broken, "reversed_not_the_reversals", [row[1] for row in db.consumptions
                                                       if row[6] != reversed_of.get(row[1], 0) or row[6] > row[5]])
    result.flag(broken, "released_not_release_plus_late_reversals", [
        b for b, (f, _, _) in db.quotas.items()
        if f[2] != sum(ch.released_fen for ch in db.changes.get(b, ()) if ch.change in ("RELEASED", "REVERSED"))])
    result.flag(broken, "notice_not_the_change", [
        f"{code} {b} v{ch.version}" for b, chain in db.changes.items() for ch in chain for code in (GANSU, XINJIANG)
        if (n := notices[code].get(quota_notice_message_id(b, ch.version))) is not None and not told_as(n, ch)])
    result.flag(broken, "ended_open_after_release", [b for b, (f, _, ended) in db.quotas.items()
                                                     if ended and f[0] - f[1] - f[2] != 0])
    for b, (figures, _, _) in db.quotas.items():
        quota, records = read[b]
        if (quota.granted_fen, quota.consumed_fen, quota.released_fen) != figures or not conserved(
                figures, quota.available_fen):
            result.flag(broken, f"get_quota_{b}", [f"{quota}"])
        listed = {(r.consumption_id, r.settlement_ref, r.drawn_fen, r.reversed_fen) for r in records}
        stored = {(row[1], row[2], row[5], row[6]) for row in by_binding[b]}
        if listed != stored or len(records) != len(by_binding[b]):
            result.flag(broken, f"get_quota_consumptions_{b}", [f"{len(records)} listed, {len(stored)} stored"])
    result.flag(broken, "giver_ledger_differs", _giver_ledger_differences(db, ledger))
    result.flag(broken, "audit_entries_not_one_per_change", [] if db.audit_quota_entries == sum(
        len(chain) for chain in db.changes.values()) else [f"{db.audit_quota_entries}"])
    return result


def _giver_ledger_differences(db: QuotaDb, ledger: control_pb2.LedgerResponse) -> list[str]:
    """Where the giver's stub holds other than the gateway says: per binding frozen = available, debited =
    consumed, released = released; the giver's account frozen and debited the sums, its balance less the debits."""
    given = {g.binding_id: (g.frozen_fen, g.debited_fen, g.released_fen) for g in ledger.given}
    wanted = {b: (g - c - r, c, r) for b, ((g, c, r), _, _) in db.quotas.items()}
    differences = [f"{b}: the stub {given.get(b)}, the gateway {wanted.get(b)}" for b in given.keys() | wanted.keys()
                   if given.get(b, (0, 0, 0)) != wanted.get(b, (0, 0, 0))]
    account = next((a for a in ledger.accounts if a.id_number == GIVER[0]), None)
    frozen, consumed = sum(w[0] for w in wanted.values()), sum(w[1] for w in wanted.values())
    if account is None or (account.frozen_fen, account.debited_fen, account.balance_fen) != (
            frozen, consumed, GIVER_BALANCE_FEN - consumed):
        differences.append(f"the giver's account {account}: frozen {frozen}, debited {consumed} expected")
    return differences
