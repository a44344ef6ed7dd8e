"""Faults around a running gateway, each bounded in time: a province down and back, a province slower than
the call deadline or than the delivery deadline, connections cut mid-call (stops: test_stops.py)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path

from tests.crash.checks import DbView, finish
from tests.crash.driver import Driver
from tests.crash.harness import (
    GANSU,
    GIVER_POLICY,
    XINJIANG,
    CuttingProxy,
    Deployment,
    start_deployment,
    wait_until,
)

TRANSFERS = 40


def test_a_province_down_for_a_while_then_back(tmp_path: Path, closing: contextlib.ExitStack, seed: int) -> None:
    """The receiver's platform is down: transfers wait RECEIVED while the outbox retries; back, each is
    delivered once and completes."""
    deployment = Deployment.allocate(tmp_path, f"sqlite:///{tmp_path / 'gongji.db'}")
    closing.callback(deployment.close)
    binding_id = start_deployment(deployment)
    driver = Driver([deployment.gateway_addresses[0]], deployment.keys_dir, binding_id, concurrency=4, seed=seed)
    closing.callback(driver.close)

    deployment.stubs[GANSU].kill9()
    down_at = time.monotonic()
    driver.run_until(TRANSFERS)
    ids = [s.transfer_id for s in driver.acknowledged]

    def retried() -> bool:
        rows = DbView.read(deployment.db_url).deliveries(ids)
        return len(rows) == len(ids) and all(r.attempts >= 3 and r.status == "PENDING" for r in rows)

    wait_until(retried, 20, "every delivery to the dead province to be tried at least 3 times")
    db = DbView.read(deployment.db_url)
    assert {db.states[t] for t in ids} == {"RECEIVED"}, "nothing is delivered while the province is down"
    attempts = sum(r.attempts for r in db.deliveries(ids))
    errors = Counter(r.last_error for r in db.deliveries(ids))

    deployment.start_stub(GANSU)  # the same port and keys; an empty memory, as after a platform restart
    back_at = time.monotonic()
    wait_until(lambda: len(deployment.snapshot(GANSU).credits) == len(ids), 40, "the province back to get them")
    recovered_s = time.monotonic() - back_at
    result, db = finish(deployment, driver, "province down then back",
                         f"down_s={back_at - down_at:.1f} delivery_attempts_while_down={attempts} "
                         f"errors_while_down={dict(errors)} delivered_after_back_s={recovered_s:.1f} ")
    assert result.final_states == {"COMMITTED": len(ids)}
    assert all(db.events[t].count("DELIVERED") == 1 for t in ids), "each delivered once"


def test_a_province_slower_than_the_call_deadline(tmp_path: Path, closing: contextlib.ExitStack, seed: int) -> None:
    """Each call to the receiver times out (0.5 s deadline, 1.5 s latency) and is retried; once the
    province is fast again, every transfer is delivered once and completes."""
    deployment = Deployment.allocate(tmp_path, f"sqlite:///{tmp_path / 'gongji.db'}")
    closing.callback(deployment.close)
    binding_id = start_deployment(deployment, gateway_env={"GONGJI_PROVINCE_CALL_TIMEOUT_SECONDS": "0.5"})
    driver = Driver([deployment.gateway_addresses[0]], deployment.keys_dir, binding_id, concurrency=4, seed=seed)
    closing.callback(driver.close)

    deployment.configure(GANSU, latency_ms=1500)
    driver.run_until(TRANSFERS // 2)
    ids = [s.transfer_id for s in driver.acknowledged]

    def timed_out_twice() -> bool:
        rows = DbView.read(deployment.db_url).deliveries(ids)
        return len(rows) == len(ids) and all(r.attempts >= 2 and r.last_error == "DEADLINE_EXCEEDED" for r in rows)

    wait_until(timed_out_twice, 30, "every delivery to time out at least twice")
    db = DbView.read(deployment.db_url)
    assert {db.states[t] for t in ids} == {"RECEIVED"}, "a delivery that timed out is not recorded as delivered"
    attempts = sum(r.attempts for r in db.deliveries(ids))

    deployment.configure(GANSU, latency_ms=0)
    result, db = finish(deployment, driver, "province slower than the deadline",
                         f"delivery_attempts_while_slow={attempts} ")
    assert result.final_states == {"COMMITTED": len(ids)}
    assert all(db.events[t].count("DELIVERED") == 1 for t in ids), "each delivered once"


def test_a_province_slower_than_the_delivery_deadline(tmp_path: Path, closing: contextlib.ExitStack,
                                                      seed: int) -> None:
    """Slow past the policy's delivery deadline (3 s): each transfer ends REJECTED / DESTINATION_UNREACHABLE
    exactly once, and both provinces are told so (the slow one once it answers in time again)."""
    deployment = Deployment.allocate(tmp_path, f"sqlite:///{tmp_path / 'gongji.db'}")
    closing.callback(deployment.close)
    binding_id = start_deployment(deployment, gateway_env={"GONGJI_PROVINCE_CALL_TIMEOUT_SECONDS": "0.5"},
                                  policies={XINJIANG: [*GIVER_POLICY, "delivery_deadline_seconds = 3"]})
    driver = Driver([deployment.gateway_addresses[0]], deployment.keys_dir, binding_id, concurrency=4, seed=seed)
    closing.callback(driver.close)

    deployment.configure(GANSU, latency_ms=1500)
    driver.run_until(TRANSFERS // 4)
    ids = [s.transfer_id for s in driver.acknowledged]
    wait_until(lambda: {DbView.read(deployment.db_url).states[t] for t in ids} == {"REJECTED"}, 30,
               "every transfer to be rejected at its delivery deadline")
    deployment.configure(GANSU, latency_ms=0)
    result, db = finish(deployment, driver, "province slower than the delivery deadline")
    assert result.final_states == {"REJECTED": len(ids)}
    assert {db.reasons[t] for t in ids} == {"DESTINATION_UNREACHABLE"}
    assert all("DELIVERED" not in db.events[t] for t in ids)


def test_connections_cut_mid_call(tmp_path: Path, closing: contextlib.ExitStack, seed: int) -> None:
    """A relay that resets random connections, both ways: platforms → gateway (submissions, confirmations)
    and gateway → receiver (deliveries, outcomes). Then it stops cutting: every transfer ends consistently."""
    deployment = Deployment.allocate(tmp_path, f"sqlite:///{tmp_path / 'gongji.db'}")
    closing.callback(deployment.close)
    to_gateway = CuttingProxy(deployment.gateway_addresses[0], seed)
    closing.callback(to_gateway.close)
    to_gansu = CuttingProxy(deployment.stub_addresses[GANSU], seed + 1)
    closing.callback(to_gansu.close)
    for code in (XINJIANG, GANSU):
        deployment.add_stub(code, to_gateway.address)
    binding_id = start_deployment(deployment, endpoints={XINJIANG: deployment.stub_addresses[XINJIANG],
                                                         GANSU: to_gansu.address})
    driver = Driver([to_gateway.address], deployment.keys_dir, binding_id, concurrency=8, seed=seed)
    closing.callback(driver.close)
    driver.wait_connected()

    for proxy in (to_gateway, to_gansu):
        proxy.cutting.set()
    driver.resume()
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline:  # the load runs while connections are cut
        time.sleep(0.1)
    for proxy in (to_gateway, to_gansu):
        proxy.cutting.clear()
    driver.pause()
    failed_calls = sum(n for code, n in driver.stats.codes.items() if code != "OK")
    result, _ = finish(deployment, driver, "connections cut mid-call",
                         f"cuts_to_gateway={to_gateway.cuts} cuts_to_receiver={to_gansu.cuts} "
                         f"calls_failed_by_cuts={failed_calls} ")
    assert to_gateway.cuts >= 5 and to_gansu.cuts >= 5, "the relay should have cut connections"
    assert failed_calls > 0, "some calls should have died mid-call"
    assert result.final_states == {"COMMITTED": result.acknowledged}
