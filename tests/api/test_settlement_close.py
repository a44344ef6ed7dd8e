"""Closing a settlement window by hand: which window an empty id means, and what is refused unless forced."""

from __future__ import annotations

from datetime import timedelta

import grpc
from sqlalchemy import text

from gateway.domain.clock import BEIJING
from protos.gongji.v1 import operations_pb2, settlements_pb2, transfers_pb2
from tests.support import XINJIANG, Stack, error_of, wait_until

W = operations_pb2
S = settlements_pb2


def close(stack: Stack, window_id: str = "", force: bool = False) -> operations_pb2.SettlementWindow:
    return stack.operations.CloseSettlementWindow(W.CloseSettlementWindowRequest(window_id=window_id, force=force),
                                                  timeout=10).window


def window(stack: Stack, window_id: str) -> operations_pb2.SettlementWindow:
    return stack.operations.GetSettlementWindow(W.GetSettlementWindowRequest(window_id=window_id), timeout=5).window


def committed(stack: Stack, amount_fen: int) -> str:
    transfer_id = stack.submit(stack.instruction(amount_fen=amount_fen)).transfer_id
    wait_until(lambda: stack.get(transfer_id, signer=XINJIANG).state == transfers_pb2.TRANSFER_STATE_COMMITTED,
               what=f"{transfer_id} to commit")
    return stack.get(transfer_id).settlement_window_id


def window_rows(stack: Stack) -> dict[str, str]:
    with stack.gateway.engine.connect() as conn:
        return dict(conn.execute(text("SELECT window_id, state FROM settlement_windows")).all())  # type: ignore[arg-type]


def test_an_empty_id_closes_today_and_only_today(stack: Stack) -> None:
    today = stack.clock.now().astimezone(BEIJING).date()
    tomorrow = (today + timedelta(days=1)).isoformat()
    # Nothing committed yet: refused, and nothing is created.
    before = window_rows(stack)
    seen = error_of(lambda: close(stack))
    assert (seen.code, seen.reason, seen.metadata.get("field")) == (
        grpc.StatusCode.FAILED_PRECONDITION, "WINDOW_EMPTY", "window_id")
    assert window_rows(stack) == before

    assert committed(stack, 4_321) == today.isoformat()
    closed = close(stack)
    assert closed.window_id == today.isoformat() and closed.state != S.SETTLEMENT_WINDOW_STATE_OPEN
    assert [(p.from_province, p.gross_fen) for p in closed.pairs] == [(XINJIANG, 4_321)]
    # Again: today's window as it is. Before, the empty id meant "the window commits go to now", so the
    # second close closed tomorrow's window, the third the day after's.
    assert close(stack).window_id == today.isoformat()
    assert close(stack).window_id == today.isoformat()
    assert tomorrow not in window_rows(stack)

    # Today's window being closed, today's next commit goes to tomorrow's (D16), which now exists but has
    # not started: it cannot be closed, by name or by force.
    assert committed(stack, 1_000) == tomorrow
    for force in (False, True):
        seen = error_of(lambda f=force: close(stack, tomorrow, force=f))  # type: ignore[misc]
        assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WINDOW_NOT_STARTED")
    assert window(stack, tomorrow).state == S.SETTLEMENT_WINDOW_STATE_OPEN


def test_an_empty_window_closes_only_with_force_and_is_settled_at_once(stack: Stack) -> None:
    past = (stack.clock.now().astimezone(BEIJING).date() - timedelta(days=3)).isoformat()
    before = window_rows(stack)
    seen = error_of(lambda: close(stack, past))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WINDOW_EMPTY")
    assert window_rows(stack) == before

    forced = close(stack, past, force=True)
    # Nothing to acknowledge or pay: before, such a window stayed ACKNOWLEDGED (0 of 0 paid) for ever.
    assert (forced.window_id, forced.state) == (past, S.SETTLEMENT_WINDOW_STATE_SETTLED)
    assert (list(forced.pairs), list(forced.provinces), forced.HasField("closed_at")) == ([], [], True)
    assert window(stack, past) == forced
    assert close(stack, past) == forced  # closing again, forced or not, answers with it as it is
    with stack.gateway.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox WHERE subject_id = :w"), {"w": past}).scalar_one() == 0
