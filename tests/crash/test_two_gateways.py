"""Two gateway processes on one PostgreSQL database, one of them killed with -9 mid-load.

Topology: a stub province calls back one gateway address (--gateway), so each stub is given one:
Xinjiang's stub calls gateway A, Gansu's stub calls gateway B. The driver (Xinjiang's platform) spreads
its submissions over both, and sends the same signed instruction to both at once a number of times.
Gateway A is the one killed: Gansu's confirmations go to B, which stays up, so nothing waits on a
platform's failover (the stubs have none). B's outbox must then deliver what A had leased, once the
lease runs out (GONGJI_OUTBOX_LEASE_SECONDS, 30 s by default, 10 s here: the shortest allowed with the
default 5 s call timeout), so this test waits that long by design.
"""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.crash.checks import DbView, account, settle, snapshots, verify_audit_chain
from tests.crash.driver import Answer, Driver
from tests.crash.harness import GANSU, XINJIANG, Deployment, start_deployment

SAME_TO_BOTH = 20
LEASE_S = 10.0


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_two_gateways_one_killed_mid_load(tmp_path: Path, closing: contextlib.ExitStack, seed: int,
                                          postgres_url: str) -> None:
    started = time.monotonic()
    deployment = Deployment.allocate(tmp_path, postgres_url, gateways=2)
    closing.callback(deployment.close)
    binding_id = start_deployment(deployment, stub_gateway={XINJIANG: 0, GANSU: 1},
                                  gateway_env={"GONGJI_OUTBOX_LEASE_SECONDS": str(LEASE_S)})
    a, b = deployment.gateway_addresses
    # Every call to the receiver takes 0.3 s, so each gateway's outbox always has messages leased in flight.
    deployment.configure(GANSU, latency_ms=300)
    driver = Driver([a, b], deployment.keys_dir, binding_id, concurrency=8, seed=seed)
    closing.callback(driver.close)
    driver.wait_connected()

    driver.resume()
    twins: list[list[Answer]] = []

    def same_to_both() -> None:
        for _ in range(SAME_TO_BOTH):
            twins.append(driver.send_everywhere_at_once(driver.new_submission()))

    twin_thread = threading.Thread(target=same_to_both)
    twin_thread.start()
    twin_thread.join(60)
    assert not twin_thread.is_alive()
    time.sleep(1.0)  # load on both a while longer

    in_flight = driver.in_flight
    deployment.gateways[0].kill9()
    killed_at = datetime.now(UTC)
    driver.targets = [b]  # the platform fails over; unanswered submissions are resent to B
    after_kill = DbView.read(deployment.db_url)
    # Leased just now: due again only when the lease runs out (retries back off 0.5 s at most).
    leased = {row.id: row.next_attempt_at for row in after_kill.outbox
              if row.status == "PENDING" and _utc(row.next_attempt_at) > killed_at + timedelta(seconds=LEASE_S / 2)}
    time.sleep(2.0)  # B finishes its own leases (0.3 s calls) in this time; A's stay as A left them
    later = {row.id: row for row in DbView.read(deployment.db_url).outbox}
    orphaned = {i for i, due in leased.items() if later[i].status == "PENDING" and later[i].next_attempt_at == due}
    driver.pause()

    resent = driver.resend_unanswered()
    acknowledged = [s.transfer_id for s in driver.acknowledged]
    settling = settle(deployment, acknowledged, 2 * LEASE_S + 60)
    snaps = snapshots(deployment)
    assert deployment.gateways[1].terminate() == 0, deployment.gateways[1].tail()
    db = DbView.read(deployment.db_url)
    result = account(list(driver.submissions), acknowledged, db, snaps)
    audit = verify_audit_chain(deployment, db)
    final_rows = {row.id: row for row in db.outbox}
    taken_over = [i for i in orphaned if final_rows[i].status == "DONE"]
    first_answers = sorted(sum(1 for answer in pair if answer.code == "OK" and not answer.replay) for pair in twins)
    summary = (
        f"two gateways: submitted={len(driver.submissions)} acknowledged={result.acknowledged} "
        f"present={result.present} doubled={result.doubled} lost={result.lost} redelivered={result.redelivered} "
        f"same_to_both={len(twins)} calls_in_flight_at_kill={in_flight} resent_to_survivor={resent} "
        f"leased_by_killed={len(orphaned)} delivered_by_survivor_after_lease={len(taken_over)} "
        f"answers_lost_then_replayed={driver.stats.replays_on_resend} "
        f"final={result.final_states} "
        f"call_codes={dict(driver.stats.codes)} audit={'ok' if audit.ok else 'FAILED'} entries={audit.entries} "
        f"totals={'agree' if not audit.totals_differences else 'DIFFER'} "
        f"checkpoints={audit.checkpoints} drain_s={settling.seconds:.1f} total_s={time.monotonic() - started:.0f}")
    print(summary, flush=True)

    assert not driver.stats.unexpected, driver.stats.unexpected[:10]
    assert driver.stats.receipt_mismatches == 0
    # The same instruction to both at once: both answer OK, one of them first, both with the same receipt.
    assert len(twins) == SAME_TO_BOTH
    assert all(all(answer.code == "OK" for answer in pair) for pair in twins), twins
    assert first_answers == [1] * SAME_TO_BOTH, twins
    assert all(pair[0].receipt == pair[1].receipt for pair in twins)
    assert result.present == result.acknowledged == len(driver.submissions), result.problems()
    assert result.lost == 0 and result.doubled == 0, result.problems()
    assert result.final_states == {"COMMITTED": result.acknowledged}
    assert db.pending_outbox() == 0
    assert orphaned, "gateway A had nothing leased when killed: the takeover was not exercised"
    assert len(taken_over) == len(orphaned)
    assert all(_utc(final_rows[i].done_at) >= _utc(leased[i]) for i in orphaned), (
        "a message leased by the killed gateway went out before its lease ran out")
    assert audit.ok and audit.transfer_entries_match_events, audit.findings[:5]
    assert audit.totals_differences == [] and audit.recount_cli == "agree", (audit.totals_differences,
                                                                             audit.recount_cli)


def _utc(at: datetime | None) -> datetime:
    assert at is not None
    return at if at.tzinfo else at.replace(tzinfo=UTC)
