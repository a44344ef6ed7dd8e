"""Logs an operator can act on: failing deliveries per province, transfers that ended REJECTED or RETURNED —
rate-limited, ids and reasons only (every API test checks its log for clear personal data)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from gateway.usecases.oplog import OperatorsLog
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import transfers_pb2
from tests.support import GANSU, Stack, wait_until

T = transfers_pb2


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "gateway.operations" and r.levelno == logging.WARNING and text in r.getMessage()]


def test_failing_deliveries_and_a_rejection_are_reported_once_each(stack: Stack,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.operations")
    stack.configure(GANSU, fail_next_calls=40)
    submitted = [stack.submit(stack.instruction()).transfer_id for _ in range(5)]
    wait_until(lambda: warnings(caplog, "deliveries to province 620000 failing"), what="a delivery warning")
    for transfer_id in submitted:  # delivered once Gansu answers again
        stack.wait_for_state(transfer_id, T.TRANSFER_STATE_COMMITTED, timeout=30)
    lines = warnings(caplog, "deliveries to province 620000 failing")
    assert len(lines) == 1, lines  # forty failed attempts: one line (the next at most 30 s later)
    assert "next retry at" in lines[0] and "UNAVAILABLE" in lines[0]

    stack.configure(GANSU, reject_reason="RECEIVER_ACCOUNT_CLOSED")
    rejected = stack.submit(stack.instruction()).transfer_id
    stack.wait_for_state(rejected, T.TRANSFER_STATE_REJECTED)
    lines = wait_until(lambda: warnings(caplog, f"transfer {rejected}"), what="the rejection's warning")
    assert lines == [f"transfer {rejected} 650000->620000 ended REJECTED (RECEIVER_ACCOUNT_CLOSED)"]


def test_a_returned_transfer_is_reported(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.operations")
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)
    transfer_id = stack.submit(stack.instruction()).transfer_id
    stack.wait_for_state(transfer_id, T.TRANSFER_STATE_DELIVERED)
    stack.clock.advance(2 * 86400)
    stack.wait_for_state(transfer_id, T.TRANSFER_STATE_RETURNED)
    assert wait_until(lambda: warnings(caplog, f"transfer {transfer_id}"), what="the return's warning") == [
        f"transfer {transfer_id} 650000->620000 ended RETURNED (CONFIRMATION_DEADLINE_PASSED)"]


def test_an_outage_cannot_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.operations")
    now = [0.0]
    oplog = OperatorsLog(every_seconds=30, clock=lambda: now[0])
    retry = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
    for second in range(120):  # two minutes of failures, ten a second, and failed transfers too
        now[0] = float(second)
        oplog.failed_deliveries("620000", 10, "UNAVAILABLE", retry)
        oplog.transfer_failed(f"t-{second}", "650000", "620000", "REJECTED", "DESTINATION_UNREACHABLE")
    deliveries = warnings(caplog, "deliveries to province 620000")
    assert len(deliveries) == 4  # at 0, 30, 60 and 90 s
    assert "300 attempt(s) failed" in deliveries[1]  # the thirty seconds in between, summed
    transfers = warnings(caplog, "ended REJECTED")
    assert len(transfers) == 4 and "29 more to province 620000" in transfers[1]
