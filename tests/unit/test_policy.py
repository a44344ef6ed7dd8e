"""Unit tests of the transfer policy rules: Beijing blackout and day (D12), limits (D12, D10)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.clock import BEIJING
from gateway.domain.eligibility import Violation
from gateway.domain.policy import (
    beijing_day,
    beijing_day_window,
    check_transfer_limits,
    count_on_beijing_day,
    gives_its_place_back,
    in_blackout,
)
from gateway.domain.provinces import NATIONAL_DEFAULTS, Policy
from gateway.domain.transfers import TransferState

DEFAULTS = Policy()  # nothing overridden: the national values of D12
NO_BLACKOUT = Policy(blackout_start_minute=0, blackout_end_minute=0)
OTHER_ZONES = [ZoneInfo("America/Los_Angeles"), ZoneInfo("Europe/London"), timezone(timedelta(hours=14)), UTC]


def utc(year: int, month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def v(reason: str, rule: str, field: str) -> Violation:
    return Violation(reason, rule, field)


@pytest.fixture
def server_zone_far_from_beijing() -> Iterator[None]:
    """Run with the process's local zone set to Los Angeles, to show the local zone plays no part."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "America/Los_Angeles"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


# --- D12: blackout window in Beijing time -------------------------------------------------------

# Beijing is UTC+8 all year: 22:00 Beijing is 14:00 UTC, 06:00 Beijing is 22:00 UTC the day before.
BLACKOUT_EDGES = [
    (utc(2026, 5, 1, 13, 59, 59), False),  # 21:59:59 Beijing
    (utc(2026, 5, 1, 14, 0, 0), True),  # 22:00:00
    (utc(2026, 5, 1, 15, 59, 59), True),  # 23:59:59
    (utc(2026, 5, 1, 16, 0, 0), True),  # 00:00:00 on 2 May
    (utc(2026, 5, 1, 21, 59, 59), True),  # 05:59:59 on 2 May
    (utc(2026, 5, 1, 22, 0, 0), False),  # 06:00:00 on 2 May
    (utc(2026, 5, 1, 4, 0, 0), False),  # noon
]


@pytest.mark.parametrize(("at", "refused"), BLACKOUT_EDGES)
def test_blackout_edges_from_utc(at: datetime, refused: bool) -> None:
    assert in_blackout(at, DEFAULTS) is refused
    assert in_blackout(at, NATIONAL_DEFAULTS) is refused


@pytest.mark.parametrize(("at", "refused"), BLACKOUT_EDGES)
def test_blackout_edges_from_any_zone(at: datetime, refused: bool) -> None:
    for zone in OTHER_ZONES:
        assert in_blackout(at.astimezone(zone), DEFAULTS) is refused, zone


@pytest.mark.usefixtures("server_zone_far_from_beijing")
@pytest.mark.parametrize(("at", "refused"), BLACKOUT_EDGES)
def test_blackout_ignores_the_servers_time_zone(at: datetime, refused: bool) -> None:
    assert time.localtime(0).tm_gmtoff == -8 * 3600  # the fixture took effect
    assert in_blackout(at, DEFAULTS) is refused
    assert [x.reason for x in check_transfer_limits(100, 0, at, DEFAULTS, None, 0)] == (
        ["TRANSFER_BLACKOUT"] if refused else []
    )


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        in_blackout(datetime(2026, 5, 1, 12, 0), DEFAULTS)
    with pytest.raises(ValueError):
        beijing_day(datetime(2026, 5, 1, 12, 0))


@pytest.mark.parametrize(
    ("beijing_wall_clock", "refused"),
    [("00:59:59", False), ("01:00:00", True), ("01:59:59", True), ("02:00:00", False), ("13:00:00", False)],
)
def test_non_wrapping_window(beijing_wall_clock: str, refused: bool) -> None:
    policy = Policy(blackout_start_minute=60, blackout_end_minute=120)  # 01:00–02:00
    hour, minute, second = map(int, beijing_wall_clock.split(":"))
    at = datetime(2026, 5, 1, hour, minute, second, tzinfo=BEIJING).astimezone(UTC)
    assert in_blackout(at, policy) is refused


def test_province_overrides_one_end_only() -> None:
    policy = Policy(blackout_start_minute=23 * 60)  # 23:00–06:00, end from the national defaults
    assert not in_blackout(utc(2026, 5, 1, 14, 30), policy)  # 22:30 Beijing
    assert in_blackout(utc(2026, 5, 1, 15, 0), policy)  # 23:00
    assert in_blackout(utc(2026, 5, 1, 21, 59, 59), policy)  # 05:59:59


INSTANTS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
MINUTES = st.integers(min_value=0, max_value=1439)


@settings(max_examples=300)
@given(INSTANTS, MINUTES)
def test_equal_ends_mean_no_blackout(at: datetime, minute: int) -> None:
    assert not in_blackout(at, Policy(blackout_start_minute=minute, blackout_end_minute=minute))


@settings(max_examples=300)
@given(INSTANTS, MINUTES, MINUTES)
def test_blackout_agrees_with_walking_the_window(at: datetime, start: int, end: int) -> None:
    # Reference: the window's minutes, walked from start round the clock until end.
    window, minute = set(), start
    while minute != end:
        window.add(minute)
        minute = (minute + 1) % 1440
    wall = at.astimezone(BEIJING)
    policy = Policy(blackout_start_minute=start, blackout_end_minute=end)
    assert in_blackout(at, policy) is (wall.hour * 60 + wall.minute in window)


# --- the Beijing calendar day ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "day"),
    [
        (utc(2026, 5, 1, 15, 59, 59), date(2026, 5, 1)),  # 23:59:59 Beijing
        (utc(2026, 5, 1, 16, 0, 0), date(2026, 5, 2)),  # midnight Beijing: 16:00 UTC
        (utc(2026, 12, 31, 16, 0, 0), date(2027, 1, 1)),
        (datetime(2026, 5, 1, 9, 0, tzinfo=ZoneInfo("America/Los_Angeles")), date(2026, 5, 2)),
    ],
)
def test_beijing_day(at: datetime, day: date) -> None:
    assert beijing_day(at) == day


def test_beijing_day_window_starts_at_16_utc() -> None:
    start, end = beijing_day_window(date(2026, 5, 2))
    assert start == utc(2026, 5, 1, 16) and end == utc(2026, 5, 2, 16)


@settings(max_examples=300)
@given(INSTANTS)
def test_every_instant_lies_in_its_beijing_days_window(at: datetime) -> None:
    start, end = beijing_day_window(beijing_day(at))
    assert start <= at < end


# --- D12: transfers per day -------------------------------------------------------------------------


def submit(earlier: list[datetime], at: datetime, policy: Policy = DEFAULTS) -> list[str]:
    """The reasons a 100-fen transfer at `at` is refused, given the giver's earlier non-failed transfers."""
    today = count_on_beijing_day(earlier, beijing_day(at))
    return [x.reason for x in check_transfer_limits(100, today, at, policy, None, 0)]


def test_fourth_transfer_of_a_beijing_day_refused_next_days_first_accepted() -> None:
    # 07:00, 09:00 and 21:00 on 1 May, Beijing time.
    earlier = [utc(2026, 4, 30, 23), utc(2026, 5, 1, 1), utc(2026, 5, 1, 13)]
    assert submit(earlier[:2], earlier[2]) == []  # the 3rd is still allowed
    assert submit(earlier, utc(2026, 5, 1, 13, 59, 59)) == ["DAILY_LIMIT_REACHED"]  # 21:59:59, the 4th
    assert submit(earlier, utc(2026, 5, 1, 22)) == []  # 06:00 on 2 May: its first


def test_the_day_turns_at_16_utc_not_at_utc_midnight() -> None:
    # Without a blackout the midnight edge itself can be submitted at.
    earlier = [utc(2026, 5, 1, 1), utc(2026, 5, 1, 2), utc(2026, 5, 1, 3)]
    assert submit(earlier, utc(2026, 5, 1, 15, 59, 59), NO_BLACKOUT) == ["DAILY_LIMIT_REACHED"]
    assert submit(earlier, utc(2026, 5, 1, 16), NO_BLACKOUT) == []
    # ...and three transfers late on the UTC day 1 May count for Beijing's 2 May.
    late = [utc(2026, 5, 1, 16, 30), utc(2026, 5, 1, 17), utc(2026, 5, 1, 18)]
    assert submit(late, utc(2026, 5, 1, 23), NO_BLACKOUT) == ["DAILY_LIMIT_REACHED"]


@pytest.mark.parametrize(("earlier", "refused"), [(0, False), (2, False), (3, True), (4, True)])
def test_daily_limit_with_national_default(earlier: int, refused: bool) -> None:
    expected = [v("DAILY_LIMIT_REACHED", "D12", "")] if refused else []
    assert check_transfer_limits(100, earlier, utc(2026, 5, 1, 4), DEFAULTS, None, 0) == expected


def test_daily_limit_province_override() -> None:
    policy = Policy(daily_transfer_limit=1)
    assert check_transfer_limits(100, 0, utc(2026, 5, 1, 4), policy, None, 0) == []
    assert check_transfer_limits(100, 1, utc(2026, 5, 1, 4), policy, None, 0) == [v("DAILY_LIMIT_REACHED", "D12", "")]


# --- D12: per-transfer maximum ----------------------------------------------------------------------

NOON = utc(2026, 5, 1, 4)


@pytest.mark.parametrize(
    ("amount", "policy", "refused"),
    [
        (200_000, DEFAULTS, False),  # exactly 2000 yuan
        (200_001, DEFAULTS, True),  # one fen more
        (1, DEFAULTS, False),
        (50_000, Policy(max_transfer_fen=50_000), False),
        (50_001, Policy(max_transfer_fen=50_000), True),
    ],
)
def test_per_transfer_maximum(amount: int, policy: Policy, refused: bool) -> None:
    expected = [v("AMOUNT_OVER_LIMIT", "D12", "amount_fen")] if refused else []
    assert check_transfer_limits(amount, 0, NOON, policy, None, 0) == expected


# --- D10: the binding's authorised amount -----------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "authorised", "used", "refused"),
    [
        (10_000, 100_000, 90_000, False),  # reaches the authorised amount exactly
        (1, 100_000, 100_000, True),  # then one fen more
        (10_001, 100_000, 90_000, True),
        (100_000, 100_000, 0, False),
        (200_000, None, 10**12, False),  # no authorised amount: no cap
    ],
)
def test_authorised_amount(amount: int, authorised: int | None, used: int, refused: bool) -> None:
    expected = [v("AUTHORISED_AMOUNT_EXCEEDED", "D10", "amount_fen")] if refused else []
    assert check_transfer_limits(amount, 0, NOON, DEFAULTS, authorised, used) == expected


def test_authorised_amount_reached_exactly_then_refused() -> None:
    authorised, used = 150_000, 0
    for amount in (100_000, 50_000):
        assert check_transfer_limits(amount, 0, NOON, DEFAULTS, authorised, used) == []
        used += amount
    assert used == authorised
    assert [x.reason for x in check_transfer_limits(1, 0, NOON, DEFAULTS, authorised, used)] == [
        "AUTHORISED_AMOUNT_EXCEEDED"
    ]


# --- all limits together ----------------------------------------------------------------------------


def test_reports_every_limit_at_once() -> None:
    at = utc(2026, 5, 1, 14)  # 22:00 Beijing
    assert check_transfer_limits(200_001, 3, at, DEFAULTS, 100_000, 0) == [
        v("TRANSFER_BLACKOUT", "D12", ""),
        v("DAILY_LIMIT_REACHED", "D12", ""),
        v("AMOUNT_OVER_LIMIT", "D12", "amount_fen"),
        v("AUTHORISED_AMOUNT_EXCEEDED", "D10", "amount_fen"),
    ]


def test_negative_history_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        check_transfer_limits(100, -1, NOON, DEFAULTS, None, 0)
    with pytest.raises(ValueError):
        check_transfer_limits(100, 0, NOON, DEFAULTS, None, -1)


@settings(max_examples=300)
@given(
    amount=st.integers(1, 2**63 - 1),
    today=st.integers(0, 10),
    at=INSTANTS,
    limit=st.integers(1, 5),
    max_fen=st.integers(1, 2**63 - 1),
    authorised=st.one_of(st.none(), st.integers(1, 2**63 - 1)),
    used=st.integers(0, 2**63 - 1),
)
def test_each_limit_fires_exactly_at_its_boundary(
    amount: int, today: int, at: datetime, limit: int, max_fen: int, authorised: int | None, used: int
) -> None:
    policy = Policy(daily_transfer_limit=limit, max_transfer_fen=max_fen)
    reasons = {x.reason for x in check_transfer_limits(amount, today, at, policy, authorised, used)}
    hour = at.astimezone(BEIJING).hour
    assert ("TRANSFER_BLACKOUT" in reasons) is (hour >= 22 or hour < 6)
    assert ("DAILY_LIMIT_REACHED" in reasons) is (today + 1 > limit)
    assert ("AMOUNT_OVER_LIMIT" in reasons) is (amount > max_fen)
    assert ("AUTHORISED_AMOUNT_EXCEEDED" in reasons) is (authorised is not None and used + amount > authorised)


def test_only_a_change_that_makes_a_transfer_fail_gives_its_place_back() -> None:
    """D10, D12: from a state not yet final to DECLINED, RETURNED or REJECTED; never from a final state."""
    S = TransferState
    giving_back = {(a, b) for a in S for b in S if gives_its_place_back(a, b)}
    assert giving_back == {(a, b) for a in (S.RECEIVED, S.DELIVERED) for b in (S.DECLINED, S.RETURNED, S.REJECTED)}
