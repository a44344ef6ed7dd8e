"""kill -9 the gateway at random moments under concurrent load, restart it, and account for every transfer.

Where the kills land: the gateway cannot be instrumented from outside (and this test must not change
it), so "after the claim", "after the write, before the answer", "after a delivery was sent, before it
was recorded" are hit statistically — 8 submissions in flight and the outbox busy at every moment of a
random 0.2–1.5 s of load, then SIGKILL. The output shows they were hit: kills with calls in flight;
resends answered as replays (the first attempt had committed and its answer died with the process:
"after the write, before the answer"); resends that were the first to commit (the process died before
its commit: claim and state change roll back together); deliveries the receiver got again (sent, but
the process died before recording the answer).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from protos.gongji.stub.v1 import control_pb2
from tests.crash.checks import DbView, account, settle, snapshots, verify_audit_chain
from tests.crash.driver import Confirmer, Driver, Platform, in_flight, pause_all
from tests.crash.harness import GANSU, Deployment, start_deployment

CYCLES = int(os.environ.get("GONGJI_CRASH_CYCLES", "20"))
CONCURRENCY = 8
# A message the killed process had leased waits out its lease (OutboxSettings.lease_seconds, 30 s, no
# setting for it) before the next process sends it: the drain is bounded well above that.
DRAIN_TIMEOUT_S = 120.0


@pytest.mark.timeout(480)
def test_kill_nine_under_load_loses_and_doubles_nothing(tmp_path: Path, closing: contextlib.ExitStack,
                                                        seed: int) -> None:
    choose = random.Random(seed)
    started = time.monotonic()
    deployment = Deployment.allocate(tmp_path, f"sqlite:///{tmp_path / 'gongji.db'}")
    closing.callback(deployment.close)
    binding_id = start_deployment(deployment)
    gateway = deployment.gateway_addresses[0]
    # Gansu's confirmations come from the test's Confirmer (see its docstring for why not the stub's own).
    deployment.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)
    driver = Driver([gateway], deployment.keys_dir, binding_id, concurrency=CONCURRENCY, seed=seed)
    closing.callback(driver.close)
    confirmer = Confirmer([gateway], deployment.keys_dir, deployment.control(GANSU))
    closing.callback(confirmer.close)
    platforms: list[Platform] = [driver, confirmer]
    for platform in platforms:
        platform.wait_connected()

    kills_with_calls_in_flight = 0
    calls_in_flight_at_kills = 0
    restarts: list[float] = []
    for cycle in range(1, CYCLES + 1):
        for platform in platforms:
            platform.resume()  # unanswered messages of the cycle before go first, byte for byte
        load_s = choose.uniform(0.2, 1.5)
        time.sleep(load_s)  # the load runs for a random while: this is where the kill lands
        calls = in_flight(platforms)
        deployment.gateway.kill9()
        pause_all(platforms)
        kills_with_calls_in_flight += calls > 0
        calls_in_flight_at_kills += calls
        restarts.append(deployment.start_gateway())
        for platform in platforms:
            platform.wait_connected()
        print(f"cycle {cycle}: load {load_s:.2f}s, kill -9 with {calls} calls in flight, "
              f"{len(driver.submissions)} submitted, {len(driver.unanswered)} + {len(confirmer.unanswered)} "
              f"unanswered, restarted in {restarts[-1]:.1f}s", flush=True)

    committed_during_cycles = Counter(DbView.read(deployment.db_url).states.values())["COMMITTED"]
    resent_at_end = driver.resend_unanswered()
    replays_checked = driver.check_replays(50)
    acknowledged = [s.transfer_id for s in driver.acknowledged]
    confirmer.resume()
    settling = settle(deployment, acknowledged, DRAIN_TIMEOUT_S)
    confirmer.pause()
    confirmer.resend_unanswered()
    snaps = snapshots(deployment)
    # A graceful stop at the end: the last state changes get a signed checkpoint, as in production.
    assert deployment.gateway.terminate() == 0, deployment.gateway.tail()
    db = DbView.read(deployment.db_url)
    result = account(list(driver.submissions), acknowledged, db, snaps)
    audit = verify_audit_chain(deployment, db)
    submits, confirms = driver.stats, confirmer.stats

    summary = (
        f"crash test: cycles={CYCLES} kills_with_calls_in_flight={kills_with_calls_in_flight} "
        f"acknowledged={result.acknowledged} present={result.present} doubled={result.doubled} "
        f"lost={result.lost} redelivered={result.redelivered} audit={'ok' if audit.ok else 'FAILED'} "
        f"totals={'agree' if not audit.totals_differences else 'DIFFER'} "
        f"entries={audit.entries} | seed={seed} submitted={len(driver.submissions)} "
        f"calls_in_flight_at_kills={calls_in_flight_at_kills} "
        f"submits_lost_then_replayed={submits.replays_on_resend} "
        f"submits_resent_and_first_to_commit={submits.first_time_on_resend} "
        f"confirms_lost_then_replayed={confirms.replays_on_resend} "
        f"confirms_resent_and_first_to_commit={confirms.first_time_on_resend} "
        f"committed_during_cycles={committed_during_cycles} resent_at_end={resent_at_end} "
        f"replays_checked={replays_checked} final={result.final_states} "
        f"redelivered_detail={result.redelivered_detail} checkpoints={audit.checkpoints} "
        f"gongji_audit_verify={audit.cli!r} submit_codes={dict(submits.codes)} confirm_codes={dict(confirms.codes)} "
        f"restart_s_max={max(restarts):.1f} drain_s={settling.seconds:.1f} total_s={time.monotonic() - started:.0f}")
    print(summary, flush=True)
    (tmp_path / "crash-summary.txt").write_text(summary + "\n", encoding="utf-8")

    assert not submits.unexpected and not confirms.unexpected, (submits.unexpected + confirms.unexpected)[:10]
    assert submits.receipt_mismatches == confirms.receipt_mismatches == 0
    assert not driver.unanswered and not confirmer.unanswered
    assert result.acknowledged == len(driver.submissions)
    assert kills_with_calls_in_flight >= CYCLES // 2, "too few kills landed with calls in flight to mean anything"
    assert result.present == result.acknowledged, result.problems()
    assert result.lost == 0, result.problems()
    assert result.doubled == 0, result.problems()
    # Gansu confirms everything: every transfer ends COMMITTED (no clock to move, none returned).
    assert result.final_states == {"COMMITTED": result.acknowledged}, result.final_states
    assert db.pending_outbox() == 0
    assert audit.ok, audit.findings[:5]
    assert audit.totals_differences == [] and audit.recount_cli == "agree", (audit.totals_differences,
                                                                             audit.recount_cli)
    assert audit.transfer_entries_match_events, "each transfer state change is one audit entry"
    assert audit.checkpoints >= 1
