"""Hand-off (usecases/handoff.py): a transfer's messages reach the outbox loop at their commit, leased, unclaimed."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from gateway.outbox_loop import OutboxSettings
from gateway.store.tables import outbox_t
from gateway.usecases.outbox_ports import Backoff, OutboxWork
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import payload_types, transfers_pb2
from tests.support import GANSU, MOTHER, XINJIANG, LoopThread, Stack, start_stack, wait_until

COMMITTED, DECLINED = transfers_pb2.TRANSFER_STATE_COMMITTED, transfers_pb2.TRANSFER_STATE_DECLINED


def outbox_rows(stack: Stack, transfer_id: str) -> list[tuple[str, str, int]]:
    with stack.gateway.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(  # type: ignore[misc]
            "SELECT kind, status, attempts FROM outbox WHERE subject_id = :s ORDER BY id"), {"s": transfer_id})]


def told(stack: Stack, transfer_id: str, province: str) -> list[int]:
    return [n.state for n in stack.snapshot(province).notifications if n.transfer_id == transfer_id]


def test_a_transfer_is_delivered_and_its_outcome_told_without_a_claim(stack: Stack,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    handed: list[OutboxWork] = []
    handoff = stack.gateway.context.handoff
    give = handoff.give
    monkeypatch.setattr(handoff, "give", lambda work: (handed.append(work), give(work))[1])  # tapped: what it is given
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)  # this test confirms: one credit, one decline
    for province in (XINJIANG, GANSU):  # the binding's messages (claimed: bindings are not handed off) all out
        stack.wait_for_outbox_idle(province)
    _, claimed_before = stack.gateway.outbox_sent

    credited = stack.submit(stack.instruction(amount_fen=700)).transfer_id
    declined = stack.submit(stack.instruction(amount_fen=800)).transfer_id
    for transfer_id in (credited, declined):
        stack.wait_for_state(transfer_id, transfers_pb2.TRANSFER_STATE_DELIVERED)
    stack.confirm(credited)
    stack.confirm(declined, decline=True)
    for transfer_id, state in ((credited, COMMITTED), (declined, DECLINED)):
        wait_until(lambda t=transfer_id, s=state: told(stack, t, XINJIANG) == [s] == told(stack, t, GANSU),  # type: ignore[misc]
                   what=f"both provinces told {transfer_id}")
        # Each of the three messages sent once, on its first attempt, and acknowledged.
        wait_until(lambda t=transfer_id: {s for _, s, _ in outbox_rows(stack, t)} == {"DONE"},  # type: ignore[misc]
                   what="the answers recorded")
        assert outbox_rows(stack, transfer_id) == [("DELIVER_TRANSFER", "DONE", 1),
                                                   ("NOTIFY_TRANSFER_OUTCOME", "DONE", 1),
                                                   ("NOTIFY_TRANSFER_OUTCOME", "DONE", 1)]
    assert stack.gateway.outbox_sent[1] == claimed_before, "a transfer message went out through a claim"

    # What was handed over is what a claim would have read back from the database.
    assert len(handed) == 6
    with stack.gateway.context.uow() as uow:
        endpoints = {p.code: p.endpoint for p in uow.provinces.list()}
        for work in handed:
            assert work.transfer is not None and work.destination_active
            assert work.endpoint == endpoints[work.message.destination]
            stored = uow.transfers.get(work.transfer.transfer_id)
            assert stored is not None
            if work.message.kind.value == "DELIVER_TRANSFER":
                assert work.message.destination == GANSU
                assert work.instruction == uow.transfers.instruction_envelope(stored.transfer_id,
                                                                              payload_types.TRANSFER_INSTRUCTION)
                assert work.transfer.state.value == "RECEIVED"
            else:
                assert work.instruction is None
                # As the outcome tells it: state, reason and decision time as stored.
                assert (work.transfer.state, work.transfer.reason, work.transfer.updated_at) == (
                    stored.state, stored.reason, stored.updated_at)
    assert {w.transfer.reason for w in handed if w.transfer and w.transfer.transfer_id == declined
            and w.message.kind.value != "DELIVER_TRANSFER"} == {"RECEIVER_DECLINED"}


def test_messages_handed_over_but_unsent_at_a_stop_are_due_at_once(loop_thread: LoopThread, tmp_path: Path,
                                                                   db_url: str) -> None:
    # One message of a province in flight at a time, each taking two seconds: the next wait in the loop.
    slow = OutboxSettings(batch_size=1, sends_per_destination=1, poll_interval_seconds=0.05,
                          sweep_interval_seconds=0.05, backoff=Backoff(base_seconds=0.05, max_seconds=0.5))
    stack = start_stack(loop_thread, tmp_path, db_url, outbox=slow, province_call_timeout_seconds=4.0)
    try:
        # Once the stack's binding is made and Gansu told so: a notice still on its way would take the one lane
        # for two seconds, and the first delivery would then wait in it until the stop.
        stack.wait_for_outbox_idle(GANSU)
        stack.configure(GANSU, latency_ms=2_000)
        ids = [stack.submit(stack.instruction(amount_fen=1_000 + i)).transfer_id for i in range(3)]
        wait_until(lambda: stack.gateway.outbox_sent[0] >= 1, what="the first delivery in flight")
        stopped_at = stack.clock.now()
    finally:
        # The gateway first: its delivery in flight must find the province still there.
        loop_thread.run(stack.gateway.stop(5.0))
        stack.channel.close()
        stack.ops_channel.close()
        for stub in stack.stubs.values():
            loop_thread.run(stub.stop(0.5))
    o = outbox_t.c
    with stack.gateway.engine.connect() as conn:
        rows = {subject: (status, attempts, due) for subject, status, attempts, due in conn.execute(
            select(o.subject_id, o.status, o.attempts, o.next_attempt_at).where(o.kind == "DELIVER_TRANSFER"))}
    assert rows[ids[0]][:2] == ("DONE", 1)  # in flight at the stop: it finished and was recorded
    # Given back: their attempt not counted, due at once (not when the 30 s lease would have run out).
    assert [rows[t][:2] for t in ids[1:]] == [("PENDING", 0), ("PENDING", 0)]
    assert all(rows[t][2] < stopped_at + timedelta(seconds=10) for t in ids[1:])


def test_handed_over_messages_make_no_claim_and_a_commit_that_queues_for_the_claim_gets_one_at_once(
        loop_thread: LoopThread, tmp_path: Path, db_url: str) -> None:
    # No poll within the test: every claim it sees is one a commit or the loop itself asked for.
    lazy = OutboxSettings(poll_interval_seconds=600.0, sweep_interval_seconds=0.05,
                          backoff=Backoff(base_seconds=0.05, max_seconds=0.5))
    # The stack's binding (made by start_stack) goes through its consent request and outcome notices, which are
    # queued for the claim: it becomes ACTIVE only because those commits asked for one.
    stack = start_stack(loop_thread, tmp_path, db_url, outbox=lazy)
    try:
        for province in (XINJIANG, GANSU):
            stack.wait_for_outbox_idle(province)
        claims_before, (handed_before, claimed_before) = stack.gateway.outbox_claims, stack.gateway.outbox_sent
        assert claims_before >= 1

        ids = [stack.submit(stack.instruction(amount_fen=100 + i)).transfer_id for i in range(20)]
        for transfer_id in ids:  # Gansu's stub credits each: a delivery and two outcomes, all handed over
            wait_until(lambda t=transfer_id: told(stack, t, XINJIANG) == [COMMITTED] == told(stack, t, GANSU),  # type: ignore[misc]
                       what=f"both provinces told {transfer_id}")
        handed, claimed = stack.gateway.outbox_sent
        assert (handed - handed_before, claimed - claimed_before) == (3 * len(ids), 0)
        assert stack.gateway.outbox_claims == claims_before, "a claim made while every message was handed over"

        # A binding's consent request is queued for the claim: its commit asks for one, the poll being far off.
        requests = stack.snapshot(GANSU).consent_requests_received
        stack.propose(MOTHER, relation_code="52")
        wait_until(lambda: stack.snapshot(GANSU).consent_requests_received == requests + 1,
                   what="the consent request claimed at its commit and sent")
        assert stack.gateway.outbox_claims > claims_before
    finally:
        stack.close()


def test_a_loop_with_every_send_slot_taken_waits_for_a_send_to_end_rather_than_spinning(
        loop_thread: LoopThread, tmp_path: Path, db_url: str) -> None:
    # One message in flight at most, and the claim's poll due all the time: the loop may claim only once the
    # send in flight ends, and until then must sleep, not turn over and over.
    one = OutboxSettings(max_in_flight=1, sends_per_destination=1, poll_interval_seconds=0.05,
                         sweep_interval_seconds=0.5, backoff=Backoff(base_seconds=0.05, max_seconds=0.5))
    stack = start_stack(loop_thread, tmp_path, db_url, outbox=one, province_call_timeout_seconds=4.0)
    try:
        for province in (XINJIANG, GANSU):
            stack.wait_for_outbox_idle(province)
        stack.configure(GANSU, latency_ms=2_000)
        handed_before = stack.gateway.outbox_sent[0]
        stack.submit(stack.instruction(amount_fen=500))
        wait_until(lambda: stack.gateway.outbox_sent[0] > handed_before, what="the delivery in flight")
        clock = time.pthread_getcpuclockid(loop_thread.thread_id)  # the gateway's loop runs on this thread
        cpu_before = time.clock_gettime(clock)
        time.sleep(1.0)
        busy = time.clock_gettime(clock) - cpu_before
        assert busy < 0.3, f"the loop's thread used {busy:.2f} s of CPU in 1 s with nothing it could do"
    finally:
        stack.close()
