"""The operators' totals are kept with every change and equal what the rows say, on each database."""

from __future__ import annotations

from sqlalchemy import text
from typer.testing import CliRunner

from gateway.cli import app
from gateway.usecases.monitoring import recount_totals
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import operations_pb2, transfers_pb2
from tests.support import GANSU, XINJIANG, Stack

T = transfers_pb2


def mixed_run(stack: Stack) -> None:
    """Transfers ending every way, and deliveries that fail before they succeed."""
    for _ in range(3):
        stack.wait_for_state(stack.submit(stack.instruction(amount_fen=1_000)).transfer_id, T.TRANSFER_STATE_COMMITTED)
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_DECLINE)
    stack.wait_for_state(stack.submit(stack.instruction(amount_fen=2_000)).transfer_id, T.TRANSFER_STATE_DECLINED)
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER, fail_next_calls=3)
    pending = stack.submit(stack.instruction(amount_fen=3_000)).transfer_id
    stack.wait_for_state(pending, T.TRANSFER_STATE_DELIVERED)  # delivered at the fourth attempt
    stack.clock.advance(2 * 86400)  # past its return deadline: RETURNED by the sweep
    stack.wait_for_state(pending, T.TRANSFER_STATE_RETURNED)
    stack.wait_for_outbox_idle(XINJIANG)
    stack.wait_for_outbox_idle(GANSU)


def test_the_totals_agree_with_the_rows_after_a_mixed_run(stack: Stack) -> None:
    mixed_run(stack)
    assert recount_totals(stack.gateway.context.uow) == []
    stats = stack.operations.GetStats(operations_pb2.GetStatsRequest(), timeout=5)
    figures = {(T.TransferState.Name(s.state), s.count, s.amount_fen) for s in stats.transfers}
    assert {("TRANSFER_STATE_COMMITTED", 3, 3_000), ("TRANSFER_STATE_DECLINED", 1, 2_000),
            ("TRANSFER_STATE_RETURNED", 1, 3_000)} <= figures
    failures = {f.province: f.failed_attempts for f in stats.delivery_failures}
    assert failures.get(GANSU, 0) >= 3 and stats.outbox_backlog == 0


def test_gongji_db_recount_says_whether_the_totals_agree(stack: Stack, db_url: str) -> None:
    mixed_run(stack)
    runner = CliRunner()
    agree = runner.invoke(app, ["db", "recount", "--database", db_url])
    assert agree.exit_code == 0 and "agree with the rows" in agree.output, agree.output
    with stack.gateway.engine.begin() as conn:  # a row changed behind the gateway's back
        conn.execute(text("UPDATE transfers SET state = 'COMMITTED' WHERE state = 'DECLINED'"))
    differ = runner.invoke(app, ["db", "recount", "--database", db_url])
    assert differ.exit_code == 1, differ.output
    assert "COMMITTED" in differ.output and "DECLINED" in differ.output


def test_each_windows_kept_figures_agree_with_its_committed_transfers(stack: Stack) -> None:
    mixed_run(stack)
    with stack.gateway.engine.connect() as conn:  # the day the three were committed (the run's clock moved on)
        window_id = conn.execute(text("SELECT DISTINCT settlement_window_id FROM transfers "
                                      "WHERE state = 'COMMITTED'")).scalar_one()
    window = stack.operations.CloseSettlementWindow(operations_pb2.CloseSettlementWindowRequest(window_id=window_id),
                                                    timeout=10).window
    assert [(p.from_province, p.to_province, p.gross_fen, p.transfer_count) for p in window.pairs] == [
        (XINJIANG, GANSU, 3_000, 3)]  # the three committed; the declined and the returned are in no window
    assert recount_totals(stack.gateway.context.uow) == []
    with stack.gateway.engine.begin() as conn:  # a committed transfer moved to another window behind the gateway
        conn.execute(text("UPDATE transfers SET settlement_window_id = '2000-01-01' WHERE transfer_id IN "
                          "(SELECT transfer_id FROM transfers WHERE state = 'COMMITTED' LIMIT 1)"))
    differences = recount_totals(stack.gateway.context.uow)
    assert any(d.startswith(f"settlement window 2000-01-01 {XINJIANG}->{GANSU}: kept (0, 0)") for d in differences)
    assert any(d.startswith(f"settlement window {window.window_id} {XINJIANG}->{GANSU}: kept (3, 3000) (count, fen), "
                            "counted (2, 2000)") for d in differences), differences
