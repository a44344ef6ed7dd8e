"""The quota crash test's accounting can fail: a consistent run passes, and each way of losing, doubling or
breaking something is flagged (no processes: the run is written down)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import pytest

from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import common_pb2, province_pb2, quotas_pb2
from scripts.launcher import GANSU, XINJIANG
from tests.crash.harness import GIVER
from tests.crash.quota_checks import Change, QuotaAccounting, QuotaDb, account_quotas
from tests.crash.quota_load import CONSUME, DISSOLVE, GIVER_BALANCE_FEN, GRANT, REVERSE, Call

B = "b-1"


@dataclasses.dataclass
class Run:
    """One binding: granted 100.00, 30.00 drawn (40.00 asked), 10.00 reversed, dissolved (70.00 released),
    5.00 reversed after the end (released); a draw refused."""

    calls: list[Call]
    db: QuotaDb
    ledger: control_pb2.LedgerResponse
    snaps: dict[str, control_pb2.SnapshotResponse]
    read: dict[str, tuple[common_pb2.QuotaFigures, list[quotas_pb2.ConsumptionRecord]]]

    def account(self) -> QuotaAccounting:
        return account_quotas(self.calls, self.db, self.ledger, self.snaps, self.read)


def notice(change: Change, times_received: int = 1) -> control_pb2.QuotaNoticeReceived:
    g, c, r = change.after
    return control_pb2.QuotaNoticeReceived(
        message_id=f"qn:{B}:{change.version}", binding_id=B,
        change=province_pb2.QuotaChange.Value(f"QUOTA_CHANGE_{change.change}"), amount_fen=change.amount_fen,
        released_fen=change.released_fen, version=change.version, times_received=times_received,
        quota=common_pb2.QuotaFigures(granted_fen=g, consumed_fen=c, released_fen=r, available_fen=g - c - r))


def consistent() -> Run:
    calls = [Call(GRANT, "g1", B, 10_000, outcome="OK"),
             Call(CONSUME, "c1", B, 4_000, settlement_ref="ST:1", outcome="OK", drawn_fen=3_000),
             Call(REVERSE, "r1", B, 1_000, settlement_ref="ST:1", consumption_id="c1", outcome="OK"),
             Call(DISSOLVE, "d1", B, 0, outcome="OK"),
             Call(REVERSE, "r2", B, 500, settlement_ref="ST:1", consumption_id="c1", outcome="OK"),
             Call(CONSUME, "c2", B, 100_000, settlement_ref="ST:2", outcome="FAILED_PRECONDITION/QUOTA_EXCEEDED")]
    changes = [Change(1, "GRANTED", 10_000, 0, (10_000, 0, 0), "g1", ""),
               Change(2, "CONSUMED", 3_000, 0, (10_000, 3_000, 0), "c1", "c1"),
               Change(3, "REVERSED", 1_000, 0, (10_000, 2_000, 0), "r1", "c1"),
               Change(4, "RELEASED", 8_000, 8_000, (10_000, 2_000, 8_000), "d1", ""),
               Change(5, "REVERSED", 500, 500, (10_000, 1_500, 8_500), "r2", "c1")]
    db = QuotaDb(quotas={B: ((10_000, 1_500, 8_500), 5, True)}, changes={B: changes},
                 consumptions=[(GANSU, "c1", "ST:1", B, 4_000, 3_000, 1_500)],
                 reversals=[(GANSU, "r1", "c1", B, 1_000, 0), (GANSU, "r2", "c1", B, 500, 500)],
                 binding_states={B: "DISSOLVED"}, outbox=[], outbox_pending=0, audit_quota_entries=5)
    ledger = control_pb2.LedgerResponse(
        province=XINJIANG,
        accounts=[control_pb2.AccountView(id_number=GIVER[0], balance_fen=GIVER_BALANCE_FEN - 1_500, frozen_fen=0,
                                          debited_fen=1_500)],
        given=[control_pb2.GivenQuotaView(binding_id=B, id_number=GIVER[0], frozen_fen=0, debited_fen=1_500,
                                          released_fen=8_500)])
    snaps = {
        XINJIANG: control_pb2.SnapshotResponse(
            quota_notices=[notice(changes[3])],
            consumption_notices=[control_pb2.ConsumptionNoticeReceived(message_id=m, times_received=1)
                                 for m in (f"cn:{GANSU}:c1", f"cr:{GANSU}:r1", f"cr:{GANSU}:r2")]),
        GANSU: control_pb2.SnapshotResponse(quota_notices=[notice(ch, 2 if ch.version == 3 else 1) for ch in changes])}
    read = {B: (common_pb2.QuotaFigures(granted_fen=10_000, consumed_fen=1_500, released_fen=8_500, available_fen=0),
                [quotas_pb2.ConsumptionRecord(consumption_id="c1", settlement_ref="ST:1", drawn_fen=3_000,
                                              reversed_fen=1_500)])}
    return Run(calls, db, ledger, snaps, read)


def test_a_consistent_run_passes() -> None:
    result = consistent().account()
    assert sum(result.lost.values()) == sum(result.doubled.values()) == sum(result.broken.values()) == 0, \
        result.problems()
    assert result.acknowledged == {GRANT: 1, CONSUME: 1, REVERSE: 2, DISSOLVE: 1}
    assert result.refused == {CONSUME: 1}
    assert result.redelivered == 1
    assert (result.partial_draws, result.late_reversals, result.released_at_end_fen) == (1, 1, 8_000)


def _stored_refused(run: Run) -> None:
    run.db.consumptions.append((GANSU, "c2", "ST:2", B, 100_000, 100, 0))


def _lost_draw(run: Run) -> None:
    run.db.consumptions.clear()


def _released_twice(run: Run) -> None:
    run.db.changes[B].append(Change(6, "RELEASED", 0, 0, (10_000, 1_500, 8_500), "d1-again", ""))


def _released_too_little(run: Run) -> None:
    run.db.changes[B][3] = Change(4, "RELEASED", 7_000, 7_000, (10_000, 2_000, 7_000), "d1", "")


def _giver_missed_a_reversal(run: Run) -> None:
    run.ledger.given[0].debited_fen = 2_000


def _giver_account_off(run: Run) -> None:
    run.ledger.accounts[0].balance_fen += 1


def _reversal_not_told(run: Run) -> None:
    del run.snaps[XINJIANG].consumption_notices[2]


def _release_told_otherwise(run: Run) -> None:
    run.snaps[XINJIANG].quota_notices[0].released_fen = 7_000


def _get_quota_differs(run: Run) -> None:
    run.read[B][0].consumed_fen = 1_000


def _grant_twice(run: Run) -> None:
    run.db.changes[B].insert(1, Change(2, "GRANTED", 10_000, 0, (20_000, 0, 0), "g1", ""))


def _not_conserved(run: Run) -> None:
    run.db.quotas[B] = ((10_000, 2_000, 8_500), 5, True)


def _dissolved_not_released(run: Run) -> None:
    run.db.quotas[B] = ((10_000, 1_500, 8_500), 5, False)


@pytest.mark.parametrize(("spoil", "bucket", "flag"), [
    (_stored_refused, "doubled", "consumption_of_refused_call"),
    (_lost_draw, "lost", "consumption_not_in_db"),
    (_released_twice, "doubled", "released_twice"),
    (_released_too_little, "broken", "chain"),
    (_giver_missed_a_reversal, "broken", "giver_ledger_differs"),
    (_giver_account_off, "broken", "giver_ledger_differs"),
    (_reversal_not_told, "lost", "reversal_not_told_giver"),
    (_release_told_otherwise, "broken", "notice_not_the_change"),
    (_get_quota_differs, "broken", f"get_quota_{B}"),
    (_grant_twice, "doubled", "change_caused_twice"),
    (_not_conserved, "broken", "not_conserved_db"),
    (_dissolved_not_released, "lost", "dissolved_not_released"),
])
def test_each_fault_is_flagged(spoil: Callable[[Run], None], bucket: str, flag: str) -> None:
    run = copy.deepcopy(consistent())
    spoil(run)
    result = run.account()
    assert getattr(result, bucket).get(flag, 0) >= 1, result.problems()
