"""Faults around a running gateway, each bounded in time: a province down and back, a province slower than
the call deadline, connections cut mid-call, and a graceful shutdown with calls in flight."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.gongji.v1 import common_pb2, relations_pb2, relations_pb2_grpc
from province_stub.messages import header, new_message_id
from province_stub.signing import load_private_key, sign_envelope
from tests.crash.checks import Accounting, DbView, account, settle, verify_audit_chain
from tests.crash.driver import Driver
from tests.crash.harness import (
    GANSU,
    GIVER,
    GIVER_POLICY,
    MOTHER,
    XINJIANG,
    CuttingProxy,
    Deployment,
    start_deployment,
    wait_until,
)

TRANSFERS = 40
SETTLE_TIMEOUT_S = 60.0


def _finish(deployment: Deployment, driver: Driver, what: str, extra: str = "") -> tuple[Accounting, DbView]:
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
    result, db = _finish(deployment, driver, "province down then back",
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
    result, db = _finish(deployment, driver, "province slower than the deadline",
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
    result, db = _finish(deployment, driver, "province slower than the delivery deadline")
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
    result, _ = _finish(deployment, driver, "connections cut mid-call",
                         f"cuts_to_gateway={to_gateway.cuts} cuts_to_receiver={to_gansu.cuts} "
                         f"calls_failed_by_cuts={failed_calls} ")
    assert to_gateway.cuts >= 5 and to_gansu.cuts >= 5, "the relay should have cut connections"
    assert failed_calls > 0, "some calls should have died mid-call"
    assert result.final_states == {"COMMITTED": result.acknowledged}


def _relation_query(deployment: Deployment) -> relations_pb2.VerifyRelationRequest:
    key = load_private_key(deployment.keys_dir / f"{XINJIANG}-k1.key")
    query = relations_pb2.RelationQuery(
        header=header(new_message_id("vr"), XINJIANG, GANSU),
        giver=common_pb2.PersonRef(id_number=GIVER[0], pooling_area=GIVER[1]),
        receiver=common_pb2.PersonRef(id_number=MOTHER[0], pooling_area=MOTHER[1]), relation_code="52")
    return relations_pb2.VerifyRelationRequest(query=sign_envelope(
        key, XINJIANG, f"{XINJIANG}-k1", "gongji.v1.RelationQuery", query.SerializeToString()))


class HealthWatch:
    """A Health.Watch stream read in a thread: every status it reports, with when it arrived."""

    def __init__(self, address: str) -> None:
        self.seen: list[tuple[float, str]] = []
        self._channel = grpc.insecure_channel(address)
        self._stream = health_pb2_grpc.HealthStub(self._channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for answer in self._stream:
                self.seen.append((time.monotonic(), health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)))

    def first(self, status: str) -> float | None:
        return next((at for at, seen in self.seen if seen == status), None)

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(5)
        self._channel.close()


@pytest.mark.timeout(180)
def test_graceful_shutdown(tmp_path: Path, closing: contextlib.ExitStack, seed: int) -> None:
    """SIGTERM with calls in flight: health says NOT_SERVING first, the calls in flight finish OK, calls
    made after are refused UNAVAILABLE, the process exits 0; restarted, everything it acknowledged completes."""
    deployment = Deployment.allocate(tmp_path, f"sqlite:///{tmp_path / 'gongji.db'}")
    closing.callback(deployment.close)
    binding_id = start_deployment(deployment)
    address = deployment.gateway_addresses[0]
    driver = Driver([address], deployment.keys_dir, binding_id, concurrency=4, seed=seed)
    closing.callback(driver.close)
    driver.wait_connected()
    watches = [HealthWatch(address), HealthWatch(deployment.ops_addresses[0])]
    for watch in watches:
        closing.callback(watch.close)
    wait_until(lambda: all(w.first("SERVING") for w in watches), 10, "both health watches to say SERVING")

    # Calls that are surely in flight at SIGTERM: VerifyRelation asks both provinces (CheckMember), and
    # the receiver's answers take 2 s (within the 5 s call deadline and the 5 s grace).
    deployment.configure(GANSU, latency_ms=2000)
    slow_channel = grpc.insecure_channel(address)
    closing.callback(slow_channel.close)
    verify = relations_pb2_grpc.RelationsStub(slow_channel).VerifyRelation
    slow = [verify.future(_relation_query(deployment), timeout=15) for _ in range(4)]
    slow_done: list[float] = []
    for future in slow:
        future.add_done_callback(lambda _: slow_done.append(time.monotonic()))
    driver.resume()
    time.sleep(0.5)  # the slow calls have reached the gateway and wait on the province; submissions flow
    sigterm_at = time.monotonic()
    assert deployment.gateway.popen is not None
    deployment.gateway.popen.terminate()

    wait_until(lambda: watches[0].first("NOT_SERVING"), 5, "health to say NOT_SERVING", interval_s=0.005)
    not_serving_at = watches[0].first("NOT_SERVING")
    assert not_serving_at is not None
    # New calls from now on, on a new connection, until the process is gone: each refused, none hanging.
    new_calls: list[tuple[float, str]] = []
    fresh_channel = grpc.insecure_channel(address)
    closing.callback(fresh_channel.close)
    submit = fresh_channel.unary_unary("/gongji.v1.Transfers/SubmitTransfer", request_serializer=None,
                                       response_deserializer=None)
    while deployment.gateway.alive and time.monotonic() - sigterm_at < 15:
        submission = driver.new_submission()
        started = time.monotonic()
        try:
            submit(submission.request, timeout=2)
            new_calls.append((started - not_serving_at, "OK"))
        except grpc.RpcError as error:
            new_calls.append((started - not_serving_at, error.code().name))
        time.sleep(0.05)
    finished = [future.result(timeout=15) for future in slow]
    exit_code = deployment.gateway.popen.wait(20)
    driver.pause()
    codes_after = Counter(code for _, code in new_calls)
    print(f"graceful shutdown: not_serving_after_sigterm_ms={1000 * (not_serving_at - sigterm_at):.0f} "
          f"slow_calls_in_flight={len(slow)} finished_ok={len(finished)} "
          f"last_finished_after_not_serving_ms={1000 * (max(slow_done) - not_serving_at):.0f} "
          f"new_calls_after={dict(codes_after)} exit_code={exit_code} "
          f"driver_codes={dict(driver.stats.codes)}", flush=True)
    assert exit_code == 0, deployment.gateway.tail()
    assert watches[1].first("NOT_SERVING") is not None, "the operators' port says NOT_SERVING too"
    for watch in watches:
        statuses = [status for _, status in watch.seen]
        assert "SERVING" not in statuses[statuses.index("NOT_SERVING"):], statuses
    # In flight when health changed, finished OK after it.
    assert all(answer.eligibility == relations_pb2.ELIGIBILITY_ELIGIBLE for answer in finished)
    assert len(slow_done) == len(slow) and min(slow_done) > not_serving_at
    assert new_calls and set(codes_after) == {"UNAVAILABLE"}, new_calls
    # The driver's submissions around SIGTERM (4 callers retrying every 50 ms): answered OK, or
    # refused UNAVAILABLE without being executed; none CANCELLED (see gateway.api.gate.CallGate).
    assert set(driver.stats.codes) <= {"OK", "UNAVAILABLE"}, driver.stats.codes

    # Back up: whatever was acknowledged before the stop completes; unanswered ones are resent.
    deployment.configure(GANSU, latency_ms=0)
    deployment.start_gateway()
    result, _ = _finish(deployment, driver, "graceful shutdown")
    assert result.final_states == {"COMMITTED": result.acknowledged}
    # A call refused at the stop was never executed: its resend was the first to commit, not a replay.
    assert all(s.codes[-1] == "OK" for s in driver.submissions.values() if set(s.codes) - {"OK"})


def test_calls_queued_at_sigterm_are_refused_unavailable_not_cancelled(tmp_path: Path, closing: contextlib.ExitStack,
                                                                       seed: int) -> None:
    """Submissions that reached the gateway just before SIGTERM but had not started (gRPC core queues
    them while the event loop is busy) are answered UNAVAILABLE / SHUTTING_DOWN, never CANCELLED: the
    gateway closes its call gate and stops the server only once the calls queued at the close have come
    through it (gateway.api.gate.CallGate). Before that fix, 9 to 14 of 16 such calls were CANCELLED —
    gRPC's code for "the caller cancelled", which a platform cannot tell from "something happened".
    Nothing ran: resent, each is the first to commit.
    """
    deployment = Deployment.allocate(tmp_path, f"sqlite:///{tmp_path / 'gongji.db'}")
    closing.callback(deployment.close)
    binding_id = start_deployment(deployment)
    driver = Driver([deployment.gateway_addresses[0]], deployment.keys_dir, binding_id, concurrency=16, seed=seed)
    closing.callback(driver.close)
    driver.wait_connected()
    driver.resume()
    wait_until(lambda: len(driver.acknowledged) >= 100, 30, "the load to run")
    sigterm_at = time.monotonic()
    assert deployment.gateway.terminate() == 0, deployment.gateway.tail()
    driver.pause()
    refused = Counter(code for started, _, code in driver.stats.timeline if started <= sigterm_at and code != "OK")
    deployment.start_gateway()
    _finish(deployment, driver, "calls queued at SIGTERM", f"in_flight_at_sigterm_refused={dict(refused)} ")
    assert refused, "no call was in flight at SIGTERM: the case this test is about did not happen"
    assert set(refused) == {"UNAVAILABLE"}, (
        f"calls in flight at SIGTERM were answered {dict(refused)}: each must run, or be refused UNAVAILABLE")
    # Refused ones never ran: each resend was the first to commit, not a replay.
    refused_first = [s.codes for s in driver.submissions.values() if s.codes and s.codes[0] == "UNAVAILABLE"]
    answered = [next(code for code in codes if code != "UNAVAILABLE") for codes in refused_first]
    assert refused_first and set(answered) == {"OK"}, refused_first
