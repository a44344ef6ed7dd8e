"""The operators' commands that cannot hurt: what `gongji` refuses, and what it shows before anyone acts."""

from __future__ import annotations

from datetime import timedelta

from gateway.domain.clock import BEIJING
from tests.api.cli_support import committed, gongji, gongji_json, wide_terminal  # noqa: F401
from tests.support import Stack


def test_settlement_close_needs_a_window_and_force_for_an_empty_one(stack: Stack) -> None:
    today = stack.clock.now().astimezone(BEIJING).date()
    # Neither a window id nor --current, or both: a usage error, and nothing is asked of the gateway.
    for args in ((), (today.isoformat(), "--current")):
        code, out = gongji(stack, "settlement", "close", *args)
        assert code == 2 and "a window id (YYYY-MM-DD or YYYY-MM) or --current" in out, out
    code, out = gongji(stack, "settlement", "show")
    assert code == 0 and "no settlement windows yet" in out

    code, out = gongji(stack, "settlement", "close", "--current")
    assert code == 1 and "FAILED_PRECONDITION WINDOW_EMPTY" in out and "Traceback" not in out
    tomorrow = (today + timedelta(days=1)).isoformat()
    code, out = gongji(stack, "settlement", "close", tomorrow, "--force")
    assert code == 1 and "FAILED_PRECONDITION WINDOW_NOT_STARTED" in out

    past = (today - timedelta(days=2)).isoformat()
    settled = gongji_json(stack, "settlement", "close", past, "--force")
    assert (settled["window_id"], settled["state"]) == (past, "SETTLEMENT_WINDOW_STATE_SETTLED")
    code, out = gongji(stack, "settlement", "show", past)
    assert code == 0 and "SETTLED" in out and "nothing to acknowledge or pay" in out

    committed(stack, 2_500)
    closed = gongji_json(stack, "settlement", "close", "--current")
    assert closed["window_id"] == today.isoformat() and closed["pairs"][0]["gross_fen"] == "2500"
    assert gongji_json(stack, "settlement", "close", "--current")["window_id"] == today.isoformat()
