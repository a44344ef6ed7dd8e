"""D16-D17 as pure rules: Beijing-calendar windows, the window after, figures and net positions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.clock import BEIJING
from gateway.domain.errors import InvalidArgument
from gateway.domain.settlement import (
    Figures,
    PairFigure,
    SettlementPeriod,
    net_positions,
    next_window,
    span_of,
    validate_payment,
    window_containing,
)

DAILY, MONTHLY = SettlementPeriod.DAILY, SettlementPeriod.MONTHLY


@pytest.mark.parametrize(("instant", "period", "window_id"), [
    # A Beijing day starts at 16:00 UTC the day before.
    (datetime(2026, 11, 21, 15, 59, 59, 999999, tzinfo=UTC), DAILY, "2026-11-21"),
    (datetime(2026, 11, 21, 16, 0, tzinfo=UTC), DAILY, "2026-11-22"),
    (datetime(2026, 11, 30, 16, 0, tzinfo=UTC), MONTHLY, "2026-12"),
    (datetime(2026, 11, 30, 15, 59, 59, tzinfo=UTC), MONTHLY, "2026-11"),
    (datetime(2026, 12, 31, 16, 0, tzinfo=UTC), DAILY, "2027-01-01"),
])
def test_the_window_of_an_instant_is_its_beijing_day_or_month(instant: datetime, period: SettlementPeriod,
                                                               window_id: str) -> None:
    span = window_containing(instant, period)
    assert span.window_id == window_id
    assert span.opens_at <= instant < span.closes_at
    assert span.opens_at.astimezone(BEIJING).time().isoformat() == "00:00:00"


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 1), timezones=st.just(UTC)),
       st.sampled_from([DAILY, MONTHLY]))
def test_windows_tile_time_without_gap_or_overlap(instant: datetime, period: SettlementPeriod) -> None:
    span = window_containing(instant, period)
    following = next_window(span, period)
    assert span.opens_at <= instant < span.closes_at
    assert following.opens_at == span.closes_at and following.window_id > span.window_id
    assert window_containing(span.closes_at - timedelta(microseconds=1), period) == span
    assert span_of(span.window_id) == span


def test_window_ids_must_name_a_real_day_or_month() -> None:
    for bad in ("2026-11-31", "2026-13", "2026/11/22", "", "2026-11-2", "x"):
        with pytest.raises(InvalidArgument) as caught:
            span_of(bad)
        assert caught.value.reason == "INVALID_WINDOW_ID"


pairs = st.lists(st.builds(PairFigure, st.sampled_from(["650000", "620000", "610000", "110000"]),
                           st.sampled_from(["650000", "620000", "610000", "110000"]),
                           st.integers(1, 10**12), st.integers(1, 10**6)), max_size=12)


@given(pairs)
def test_net_positions_sum_to_zero(figures: list[PairFigure]) -> None:
    positions = net_positions(figures)
    assert sum(p.net_fen for p in positions) == 0
    for position in positions:
        received = sum(f.gross_fen for f in figures if f.to_province == position.province)
        paid = sum(f.gross_fen for f in figures if f.from_province == position.province)
        assert position.net_fen == received - paid


def test_a_province_is_shown_only_its_own_pairs() -> None:
    figures = Figures("2026-11-22", datetime(2026, 11, 21, 16, tzinfo=UTC), datetime(2026, 11, 22, 16, tzinfo=UTC),
                      (PairFigure("650000", "620000", 100, 1), PairFigure("620000", "610000", 40, 1)))
    assert [p.to_province for p in figures.concerning("650000").pairs] == ["620000"]
    assert {p.province: p.net_fen for p in figures.positions} == {"650000": -100, "620000": 60, "610000": 40}


def test_payment_references_are_validated() -> None:
    today = date(2026, 11, 22)
    payment = validate_payment("650000", "620000", "ICBC", "ICBC-2026/11.22_1", "2026-11-22", 0, today)
    assert payment.bank == "ICBC" and payment.paid_on == today
    assert validate_payment("650000", "620000", "102100099996", "S", "2026-11-22", 0, today).bank == "102100099996"
    for args, reason in [
        (("650000", "620000", "", "S", "2026-11-22"), "INVALID_BANK"),
        (("650000", "620000", "B" * 65, "S", "2026-11-22"), "INVALID_BANK"),
        # A bank is named by its code, not by free text (which could hold a name).
        (("650000", "620000", "中国工商银行", "S", "2026-11-22"), "INVALID_BANK"),
        (("650000", "620000", " ICBC ", "S", "2026-11-22"), "INVALID_BANK"),
        (("650000", "620000", "ICBC\x1b[31m", "S", "2026-11-22"), "INVALID_BANK"),
        (("650000", "620000", "ICBC-620102201508160027", "S", "2026-11-22"), "REFERENCE_LOOKS_LIKE_ID_NUMBER"),
        (("650000", "620000", "B", "", "2026-11-22"), "INVALID_SERIAL_NUMBER"),
        (("650000", "620000", "B", "王小红", "2026-11-22"), "INVALID_SERIAL_NUMBER"),
        (("650000", "620000", "B", "=1+1", "2026-11-22"), "INVALID_SERIAL_NUMBER"),
        (("650000", "620000", "B", "S-620102201508160027", "2026-11-22"), "REFERENCE_LOOKS_LIKE_ID_NUMBER"),
        (("650000", "620000", "B", "S", "2026-11-23"), "INVALID_PAYMENT_DATE"),
        (("650000", "620000", "B", "S", "22/11/2026"), "INVALID_PAYMENT_DATE"),
        (("65000", "620000", "B", "S", "2026-11-22"), "INVALID_PROVINCE_CODE"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            validate_payment(*args, 3, today)  # type: ignore[arg-type]
        assert caught.value.reason == reason and caught.value.field and caught.value.field.startswith("payments[3]")
