"""The quota's arithmetic (Q2-Q8): each rule alone, and conservation (Q3) under any sequence of changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.errors import FailedPrecondition
from gateway.domain.quota import QuotaBalance, QuotaChange, clearing_month, draw, release_unused, reverse, set_quota


def test_setting_raises_by_granting_and_lowers_by_releasing_unused_quota_only() -> None:
    balance, change, size = set_quota(QuotaBalance(), 100_000)
    assert (balance, change, size) == (QuotaBalance(granted_fen=100_000), QuotaChange.GRANTED, 100_000)
    balance, drawn = draw(balance, 18_000, allow_partial=False)
    assert drawn == 18_000 and balance.available_fen == 82_000
    balance, change, size = set_quota(balance, 50_000)
    assert (change, size, balance.released_fen, balance.available_fen) == (QuotaChange.LOWERED, 50_000, 50_000, 32_000)
    with pytest.raises(FailedPrecondition) as refused:
        set_quota(balance, 17_999)  # below what is consumed
    assert refused.value.reason == "QUOTA_BELOW_CONSUMED"
    balance, _, _ = set_quota(balance, 18_000)  # down to exactly what is consumed
    assert balance.available_fen == 0 and balance.conserved


def test_a_draw_beyond_the_quota_is_refused_or_partial_when_asked() -> None:
    balance = QuotaBalance(granted_fen=10_000)
    with pytest.raises(FailedPrecondition) as refused:
        draw(balance, 10_001, allow_partial=False)
    assert refused.value.reason == "QUOTA_EXCEEDED"
    partial, drawn = draw(balance, 10_001, allow_partial=True)
    assert (drawn, partial.available_fen) == (10_000, 0)
    with pytest.raises(FailedPrecondition):
        draw(partial, 1, allow_partial=True)  # nothing left to draw at all


def test_a_reversal_goes_back_to_the_quota_while_active_and_to_the_giver_once_ended() -> None:
    balance = QuotaBalance(granted_fen=100_000, consumed_fen=30_000)
    assert reverse(balance, 5_000, binding_active=True) == QuotaBalance(100_000, 25_000, 0)
    ended, released = release_unused(balance)
    assert (released, ended) == (70_000, QuotaBalance(100_000, 30_000, 70_000))
    assert reverse(ended, 5_000, binding_active=False) == QuotaBalance(100_000, 25_000, 75_000)


def test_the_clearing_month_is_the_beijing_calendar_month() -> None:
    assert clearing_month(datetime(2026, 5, 31, 15, 59, tzinfo=UTC)) == "2026-05"
    assert clearing_month(datetime(2026, 5, 31, 16, 0, tzinfo=UTC)) == "2026-06"  # 00:00 on 1 June in Beijing


ops = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 300_000)),
    st.tuples(st.just("draw"), st.integers(1, 150_000), st.booleans()),
    st.tuples(st.just("reverse"), st.integers(1, 150_000)),
    st.just(("end",)),
), max_size=40)


@given(ops)
def test_conservation_holds_after_every_change(sequence: list[tuple[object, ...]]) -> None:
    """Q3 against a model that only adds up what went in and out."""
    balance, active = QuotaBalance(), True
    frozen = drawn_total = back_total = 0  # the model: what the giver froze, what was drawn, what came back
    for op in sequence:
        try:
            if op[0] == "set" and active:
                before = balance.quota_fen
                balance, _, _ = set_quota(balance, int(op[1]))  # type: ignore[call-overload]
                frozen += max(0, balance.quota_fen - before)
            elif op[0] == "draw" and active:
                balance, drawn = draw(balance, int(op[1]), bool(op[2]))  # type: ignore[call-overload]
                drawn_total += drawn
            elif op[0] == "reverse":
                amount = min(int(op[1]), drawn_total - back_total)  # type: ignore[call-overload]
                if amount > 0:
                    balance = reverse(balance, amount, active)
                    back_total += amount
            elif op[0] == "end" and active:
                balance, _ = release_unused(balance)
                active = False
        except FailedPrecondition:
            pass
        assert balance.conserved
        assert balance.granted_fen == frozen
        assert balance.consumed_fen == drawn_total - back_total
    if not active:
        assert balance.available_fen == 0  # everything unused went back to the giver
