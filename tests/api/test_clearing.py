"""The quota regime's monthly clearing (Q10) through the settlement windows' flow (D16-D18): real gateway, real stub
provinces, SQLite and PostgreSQL. A clearing month "QYYYY-MM" is closed on schedule or by the operator, its figures
(one line per ordered pair, from the month's running totals) signed and sent, acknowledged by the stubs, paid,
SETTLED."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import grpc

from gateway.domain.quota import clearing_span, next_clearing_span
from protos.gongji.v1 import operations_pb2, settlements_pb2
from tests.api.quota_calls import consume, grant, reverse, rows
from tests.api.test_settlement import (
    close,
    figures_of,
    gateway_signed,
    get_settlement,
    pay,
    wait_closed,
    wait_window_state,
    window,
)
from tests.support import GANSU, XINJIANG, Stack, error_of

W = operations_pb2
S = settlements_pb2


def line(w: operations_pb2.SettlementWindow | settlements_pb2.SettlementFigures) -> list[tuple[object, ...]]:
    return [(x.from_province, x.to_province, x.consumed_fen, x.reversed_fen, x.net_fen, x.consumption_count,
             x.reversal_count) for x in w.lines]


def positions(w: operations_pb2.SettlementWindow | settlements_pb2.SettlementFigures) -> dict[str, int]:
    return {p.province: p.net_fen for p in w.positions}


def force_close(stack: Stack, window_id: str) -> operations_pb2.SettlementWindow:
    return stack.operations.CloseSettlementWindow(W.CloseSettlementWindowRequest(window_id=window_id, force=True),
                                                  timeout=10).window


def list_ids(stack: Stack, kind: W.SettlementWindowKind.ValueType) -> list[str]:
    answer = stack.operations.ListSettlementWindows(W.ListSettlementWindowsRequest(kind=kind), timeout=5)
    return [w.window_id for w in answer.windows]


def move_into(stack: Stack, month_opens_at: datetime) -> None:
    """Move the test clock a minute past the start of a month (the gateway and the stubs read this clock)."""
    stack.clock.advance((month_opens_at - stack.clock.now()).total_seconds() + 60)


def test_hami_month_closed_acknowledged_paid_and_late_reversal_in_the_next_month(stack: Stack) -> None:
    grant(stack, 100_000)
    bill = consume(stack, 18_000)  # 300.00 at a Lanzhou pharmacy, 120.00 from her own account, 180.00 drawn
    month = clearing_span(stack.clock.now())
    assert bill.clearing_window_id == month.window_id
    ref = rows(stack, "SELECT settlement_ref FROM consumptions")[0][0]
    returned = reverse(stack, ref, 5_000)  # a 50.00 drug returned
    assert returned.clearing_window_id == month.window_id

    # Not begun, or holding nothing: refused as transfers' windows are; forced, an empty month is SETTLED at once.
    later = next_clearing_span(next_clearing_span(month))
    seen = error_of(lambda: close(stack, later.window_id))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WINDOW_NOT_STARTED")
    seen = error_of(lambda: close(stack, "Q2026-01"))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WINDOW_EMPTY")
    empty = force_close(stack, "Q2026-01")
    assert (empty.state, list(empty.lines), list(empty.provinces)) == (S.SETTLEMENT_WINDOW_STATE_SETTLED, [], [])

    closed = close(stack, month.window_id)
    hami = [(XINJIANG, GANSU, 18_000, 5_000, 13_000, 1, 1)]  # Xinjiang's fund owes Gansu's 130.00
    assert line(closed) == hami and list(closed.pairs) == []
    assert positions(closed) == {XINJIANG: -13_000, GANSU: 13_000}
    assert list(closed.provinces) == sorted((XINJIANG, GANSU))
    assert closed.state in (S.SETTLEMENT_WINDOW_STATE_CLOSED, S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED)

    # The month is closed: a new draw and a late reversal of its consumption go to the next month.
    following = next_clearing_span(month)
    assert consume(stack, 2_000).clearing_window_id == following.window_id
    assert reverse(stack, ref, 3_000).clearing_window_id == following.window_id

    # Both stubs received their own figures, gateway-signed, and acknowledged them by themselves.
    acknowledged = wait_window_state(stack, month.window_id, S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED)
    assert list(acknowledged.acknowledged_by) == sorted((XINJIANG, GANSU))
    for code in (XINJIANG, GANSU):
        received = {r.window_id: r for r in stack.snapshot(code).settlements}[month.window_id]
        assert received.times_received == 1 and received.net_fen == positions(closed)[code]
        view = get_settlement(stack, code, month.window_id)
        assert view.state == S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED and gateway_signed(stack, view.figures)
        assert hashlib.sha256(view.figures.payload).digest() == received.figures_sha256
        mine = figures_of(view.figures)
        assert (mine.window_id, mine.header.message_id) == (month.window_id, f"stl:{month.window_id}:{code}")
        assert line(mine) == hami and list(mine.pairs) == []
        assert positions(mine) == {code: positions(closed)[code]}
    # "The latest closed window" of a GetSettlement without window_id stays the transfers': none is closed here.
    seen = error_of(lambda: get_settlement(stack, GANSU))
    assert (seen.code, seen.reason) == (grpc.StatusCode.NOT_FOUND, "NO_CLOSED_WINDOW")

    # D18: the payment of the line's pair settles it; a pair the month has no line for is refused.
    seen = error_of(lambda: pay(stack, month.window_id, (GANSU, XINJIANG, "ICBC-9")))
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAIR_NOT_IN_WINDOW")
    settled = pay(stack, month.window_id, (XINJIANG, GANSU, "ICBC-Q1"))
    assert settled.state == S.SETTLEMENT_WINDOW_STATE_SETTLED and len(settled.payments) == 1
    # A closed month never changes, whatever was recorded since.
    assert (line(window(stack, month.window_id)), positions(window(stack, month.window_id))) == (
        hami, {XINJIANG: -13_000, GANSU: 13_000})

    # The next month: 20.00 drawn, 30.00 of the earlier consumption reversed: a negative net, which the
    # receivers' province (Gansu) pays back; the payment names the line's pair.
    seen = error_of(lambda: close(stack, following.window_id))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WINDOW_NOT_STARTED")
    move_into(stack, following.opens_at)
    negative = close(stack, following.window_id)
    assert line(negative) == [(XINJIANG, GANSU, 2_000, 3_000, -1_000, 1, 1)]
    assert positions(negative) == {XINJIANG: 1_000, GANSU: -1_000}
    wait_window_state(stack, following.window_id, S.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED)
    assert pay(stack, following.window_id, (XINJIANG, GANSU, "ICBC-Q2")).state == S.SETTLEMENT_WINDOW_STATE_SETTLED

    # Operators list clearing months apart from the transfers' windows.
    clearing = list_ids(stack, W.SETTLEMENT_WINDOW_KIND_CLEARING)
    assert {month.window_id, following.window_id, "Q2026-01"} <= set(clearing)
    assert all(w.startswith("Q") for w in clearing) and clearing == sorted(clearing, reverse=True)
    assert not any(w.startswith("Q") for w in list_ids(stack, W.SETTLEMENT_WINDOW_KIND_TRANSFERS))
    unknown = W.ListSettlementWindowsRequest(kind=W.SettlementWindowKind.ValueType(7))
    seen = error_of(lambda: stack.operations.ListSettlementWindows(unknown, timeout=5))
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_WINDOW_KIND")


def test_a_month_closes_on_schedule_after_its_end_and_the_close_delay(stack: Stack) -> None:
    grant(stack, 40_000)
    consume(stack, 6_000)
    month = clearing_span(stack.clock.now())
    # Just past the month's end (Beijing), within the close delay (10 minutes by default): still open.
    stack.clock.advance((month.closes_at - stack.clock.now()).total_seconds() + 60)
    stack.wait_for_sweeps()  # the scheduled close runs in the sweep: it has seen this time, and left it open
    assert window(stack, month.window_id).state == S.SETTLEMENT_WINDOW_STATE_OPEN
    stack.clock.advance(10 * 60)
    closed = wait_closed(stack, month.window_id)
    assert line(closed) == [(XINJIANG, GANSU, 6_000, 0, 6_000, 1, 0)]
    assert consume(stack, 1_000).clearing_window_id == next_clearing_span(month).window_id


def test_a_month_netting_to_zero_is_settled_by_the_acknowledgements_alone(stack: Stack) -> None:
    grant(stack, 50_000)
    consume(stack, 7_000)
    ref = rows(stack, "SELECT settlement_ref FROM consumptions")[0][0]
    reverse(stack, ref, 7_000)
    month = clearing_span(stack.clock.now()).window_id
    closed = close(stack, month)
    assert line(closed) == [(XINJIANG, GANSU, 7_000, 7_000, 0, 1, 1)]
    assert positions(closed) == {XINJIANG: 0, GANSU: 0}
    settled = wait_window_state(stack, month, S.SETTLEMENT_WINDOW_STATE_SETTLED)
    assert list(settled.acknowledged_by) == sorted((XINJIANG, GANSU)) and list(settled.payments) == []
    seen = error_of(lambda: pay(stack, month, (XINJIANG, GANSU, "ICBC-0")))
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAIR_NOT_IN_WINDOW")  # nothing to pay


def test_closing_reads_the_running_totals_and_the_figures_equal_the_consumptions(stack: Stack) -> None:
    """The frozen lines are the running totals; they agree with the rows they sum (here, few enough to count)."""
    grant(stack, 90_000)
    for amount in (1_000, 2_500, 4_000):
        consume(stack, amount)
    refs = [r[0] for r in rows(stack, "SELECT settlement_ref FROM consumptions ORDER BY drawn_fen")]
    reverse(stack, refs[0], 400)
    reverse(stack, refs[2], 1_000)
    month = clearing_span(stack.clock.now()).window_id
    closed = close(stack, month)
    drawn = rows(stack, "SELECT sum(drawn_fen), count(*) FROM consumptions WHERE clearing_window_id = :m", m=month)
    back = rows(stack, "SELECT sum(amount_fen), count(*) FROM consumption_reversals WHERE clearing_window_id = :m",
                m=month)
    (consumed, consumptions), (reversed_, reversals) = drawn[0], back[0]
    assert line(closed) == [(XINJIANG, GANSU, consumed, reversed_, consumed - reversed_, consumptions, reversals)]
    assert (consumed, reversed_) == (7_500, 1_400)
    again = close(stack, month)  # closing again answers with it as it is (the stubs may have acknowledged since)
    assert (line(again), positions(again), again.closed_at) == (line(closed), positions(closed), closed.closed_at)


def test_a_month_closed_while_draws_and_reversals_arrive_holds_exactly_what_was_recorded_in_it(stack: Stack) -> None:
    """D16 for the clearing: draws and reversals at the moment of the close each land in exactly one month, the
    closed month's figures are exactly those assigned to it, and the rest are in the next month."""
    grant(stack, 500_000)
    early = [consume(stack, 1_000 + i) for i in range(4)]
    refs = [r[0] for r in rows(stack, "SELECT settlement_ref FROM consumptions")]
    month = clearing_span(stack.clock.now())
    results: dict[str, str] = {}

    def draw(i: int) -> None:
        results[f"draw-{i}"] = consume(stack, 2_000 + i).clearing_window_id

    def undo(i: int) -> None:
        results[f"reverse-{i}"] = reverse(stack, refs[i], 300).clearing_window_id

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(draw, i) for i in range(12)] + [pool.submit(undo, i) for i in range(4)]
        closed = close(stack, month.window_id)
        for future in futures:
            future.result()
    assert len(early) == 4 and set(results.values()) <= {month.window_id, next_clearing_span(month).window_id}
    for window_id in (month.window_id, next_clearing_span(month).window_id):
        drawn = rows(stack, "SELECT coalesce(sum(drawn_fen), 0), count(*) FROM consumptions "
                            "WHERE clearing_window_id = :m", m=window_id)[0]
        back = rows(stack, "SELECT coalesce(sum(amount_fen), 0), count(*) FROM consumption_reversals "
                           "WHERE clearing_window_id = :m", m=window_id)[0]
        if window_id == month.window_id:
            expected = [(XINJIANG, GANSU, drawn[0], back[0], drawn[0] - back[0], drawn[1], back[1])]
            assert line(closed) == expected == line(window(stack, window_id))
        else:
            assert (drawn[1], back[1]) == (
                sum(1 for k, v in results.items() if k.startswith("draw") and v == window_id),
                sum(1 for k, v in results.items() if k.startswith("reverse") and v == window_id))
    total = rows(stack, "SELECT sum(drawn_fen) FROM consumptions")[0][0]
    assert total == sum(1_000 + i for i in range(4)) + sum(2_000 + i for i in range(12))
