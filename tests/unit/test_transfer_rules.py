"""Unit tests of the transfer rules: validation (D1, D2, D11), deadlines (D13), policy, backoff, keys."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.clock import BEIJING
from gateway.domain.envelope import Header
from gateway.domain.errors import InvalidArgument
from gateway.domain.money import MAX_AMOUNT_FEN
from gateway.domain.provinces import (
    NATIONAL_DEFAULTS,
    MutualAidMode,
    Policy,
    ProvinceKey,
    effective_policy,
    validate_policy,
    validate_province_code,
)
from gateway.domain.transfers import (
    INT64_MAX,
    PersonRef,
    TransferInstruction,
    delivery_deadline,
    return_deadline,
    validate_instruction,
)
from gateway.usecases.outbox_ports import Backoff

# A fixed "today" keeps the tests independent of the calendar they run on.
TODAY = date(2026, 5, 1)
CREATED_AT = datetime(2026, 5, 1, 15, 0, tzinfo=BEIJING)

XINJIANG, GANSU = "650000", "620000"
GIVER = PersonRef("650502199001011230", "650500")  # Hami, valid check character
RECEIVER = PersonRef("620102196505120026", "620100")  # Lanzhou, valid check character


def bj(year: int, month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=BEIJING)


def valid_instruction() -> TransferInstruction:
    return TransferInstruction(
        header=Header(message_id="tr-20260501-0001", sender=XINJIANG, receiver=GANSU, created_at=CREATED_AT),
        giver=GIVER,
        receiver=RECEIVER,
        amount_fen=50_000,
        currency="CNY",
        expires_at=None,
        binding_id="bd-0001",
    )


Mutation = Callable[[TransferInstruction], TransferInstruction]


def header(**changes: object) -> Mutation:
    return lambda i: dataclasses.replace(i, header=dataclasses.replace(i.header, **changes))  # type: ignore[arg-type]


def giver(**changes: object) -> Mutation:
    return lambda i: dataclasses.replace(i, giver=dataclasses.replace(i.giver, **changes))  # type: ignore[arg-type]


def receiver(**changes: object) -> Mutation:
    return lambda i: dataclasses.replace(i, receiver=dataclasses.replace(i.receiver, **changes))  # type: ignore[arg-type]


def field(**changes: object) -> Mutation:
    return lambda i: dataclasses.replace(i, **changes)  # type: ignore[arg-type]


def both(first: Mutation, second: Mutation) -> Mutation:
    return lambda i: second(first(i))


# (mutation, expected reason, expected field)
BAD_INSTRUCTIONS = {
    "message_id too long": (header(message_id="a" * 65), "INVALID_MESSAGE_ID", "header.message_id"),
    "message_id with a slash": (header(message_id="tr/1"), "INVALID_MESSAGE_ID", "header.message_id"),
    "message_id with a space": (header(message_id="tr 1"), "INVALID_MESSAGE_ID", "header.message_id"),
    "message_id in Chinese": (header(message_id="转账1"), "INVALID_MESSAGE_ID", "header.message_id"),
    "message_id with a newline": (header(message_id="tr-1\n"), "INVALID_MESSAGE_ID", "header.message_id"),
    "message_id empty": (header(message_id=""), "INVALID_MESSAGE_ID", "header.message_id"),
    "receiver province five digits": (header(receiver="62000"), "INVALID_PROVINCE_CODE", "header.receiver"),
    "receiver province is a city": (header(receiver="620100"), "INVALID_PROVINCE_CODE", "header.receiver"),
    "receiver province letters": (header(receiver="gansu0"), "INVALID_PROVINCE_CODE", "header.receiver"),
    "receiver is the gateway": (header(receiver="gateway"), "INVALID_PROVINCE_CODE", "header.receiver"),
    "receiver province empty": (header(receiver=""), "INVALID_PROVINCE_CODE", "header.receiver"),
    "same province": (
        both(header(receiver=XINJIANG), receiver(pooling_area="650100")),
        "NOT_CROSS_PROVINCE",
        "header.receiver",
    ),
    "giver ID wrong check character": (
        giver(id_number="650502199001011231"),
        "INVALID_ID_NUMBER",
        "giver.id_number",
    ),
    "giver ID too short": (giver(id_number="65050219900101123"), "INVALID_ID_NUMBER", "giver.id_number"),
    "giver ID born after today": (
        giver(id_number="650502202701010014"),
        "INVALID_ID_NUMBER",
        "giver.id_number",
    ),
    "receiver ID wrong check character": (
        receiver(id_number="620102196505120027"),
        "INVALID_ID_NUMBER",
        "receiver.id_number",
    ),
    "receiver ID empty": (receiver(id_number=""), "INVALID_ID_NUMBER", "receiver.id_number"),
    "giver pooling area in the receiver's province": (
        giver(pooling_area="620100"),
        "INVALID_POOLING_AREA",
        "giver.pooling_area",
    ),
    "receiver pooling area in the giver's province": (
        receiver(pooling_area="650500"),
        "INVALID_POOLING_AREA",
        "receiver.pooling_area",
    ),
    "giver pooling area five digits": (
        giver(pooling_area="65050"),
        "INVALID_POOLING_AREA",
        "giver.pooling_area",
    ),
    "giver pooling area seven digits": (
        giver(pooling_area="6505000"),
        "INVALID_POOLING_AREA",
        "giver.pooling_area",
    ),
    "receiver pooling area with a letter": (
        receiver(pooling_area="62010a"),
        "INVALID_POOLING_AREA",
        "receiver.pooling_area",
    ),
    "receiver pooling area empty": (
        receiver(pooling_area=""),
        "INVALID_POOLING_AREA",
        "receiver.pooling_area",
    ),
    "same person as giver and receiver": (
        both(
            giver(id_number="11010519491231002X", pooling_area="650500"),
            receiver(id_number="11010519491231002X"),
        ),
        "SAME_PERSON",
        "receiver.id_number",
    ),
    "same person, lowercase x for the receiver": (
        both(giver(id_number="11010519491231002X"), receiver(id_number="11010519491231002x")),
        "SAME_PERSON",
        "receiver.id_number",
    ),
    "same person, lowercase x for the giver": (
        both(giver(id_number="11010519491231002x"), receiver(id_number="11010519491231002X")),
        "SAME_PERSON",
        "receiver.id_number",
    ),
    "amount zero": (field(amount_fen=0), "INVALID_AMOUNT", "amount_fen"),
    "amount negative": (field(amount_fen=-100), "INVALID_AMOUNT", "amount_fen"),
    "amount beyond int64": (field(amount_fen=INT64_MAX + 1), "INVALID_AMOUNT", "amount_fen"),
    "amount beyond the bound": (field(amount_fen=MAX_AMOUNT_FEN + 1), "INVALID_AMOUNT", "amount_fen"),
    "currency USD": (field(currency="USD"), "UNSUPPORTED_CURRENCY", "currency"),
    "currency empty": (field(currency=""), "UNSUPPORTED_CURRENCY", "currency"),
    "currency lowercase": (field(currency="cny"), "UNSUPPORTED_CURRENCY", "currency"),
    "expires_at before created_at": (
        field(expires_at=CREATED_AT - timedelta(seconds=1)),
        "INVALID_EXPIRY",
        "expires_at",
    ),
    "expires_at equal to created_at": (field(expires_at=CREATED_AT), "INVALID_EXPIRY", "expires_at"),
    "binding_id with bad characters": (field(binding_id="bd/1"), "INVALID_MESSAGE_ID", "binding_id"),
    "no binding_id (D10)": (field(binding_id=""), "MISSING_FIELD", "binding_id"),
    "binding_id too long": (field(binding_id="b" * 65), "INVALID_MESSAGE_ID", "binding_id"),
}

# Codes are ASCII digits only, as in ID numbers: \d and str.isdigit() also accept other scripts' digits.
NON_ASCII_CASES = [
    pytest.param(
        both(header(receiver="٦٢0000"), receiver(pooling_area="٦٢0100")),
        "INVALID_PROVINCE_CODE",
        "header.receiver",
        id="receiver province in Arabic-Indic digits",
    ),
    pytest.param(
        receiver(pooling_area="62٠١٠٠"),
        "INVALID_POOLING_AREA",
        "receiver.pooling_area",
        id="receiver pooling area with Arabic-Indic digits",
    ),
    pytest.param(
        giver(pooling_area="65０５００"),
        "INVALID_POOLING_AREA",
        "giver.pooling_area",
        id="giver pooling area with full-width digits",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "reason", "field_name"),
    [pytest.param(*case, id=name) for name, case in BAD_INSTRUCTIONS.items()] + NON_ASCII_CASES,
)
def test_a_bad_field_is_refused_with_its_reason_and_field(mutate: Mutation, reason: str, field_name: str) -> None:
    instruction = mutate(valid_instruction())
    with pytest.raises(InvalidArgument) as caught:
        validate_instruction(instruction, TODAY)
    assert (caught.value.reason, caught.value.field) == (reason, field_name)


def test_refusals_never_echo_the_id_numbers() -> None:
    # D19: messages travel to clients and logs; ID numbers must not appear in clear.
    for mutate in (
        giver(id_number="650502199001011231"),
        both(giver(id_number="11010519491231002X"), receiver(id_number="11010519491231002X")),
    ):
        with pytest.raises(InvalidArgument) as caught:
            validate_instruction(mutate(valid_instruction()), TODAY)
        assert "650502199001011231" not in str(caught.value)
        assert "11010519491231002X" not in str(caught.value)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(field(), id="as built"),
        pytest.param(header(message_id="A" * 64), id="message_id of 64 characters"),
        pytest.param(header(message_id="a.b_c:d-9"), id="message_id with every allowed punctuation"),
        pytest.param(field(amount_fen=1), id="amount of one fen"),
        pytest.param(field(amount_fen=MAX_AMOUNT_FEN), id="amount at the bound that keeps sums in int64"),
        pytest.param(field(expires_at=CREATED_AT + timedelta(microseconds=1)), id="expiry just after creation"),
        pytest.param(giver(id_number="652201198506152316", pooling_area="650500"), id="Hami person born before 2016"),
        pytest.param(receiver(id_number="11010519491231002x"), id="lowercase x check character"),
        pytest.param(receiver(pooling_area="629900"), id="the province's own pool"),
        pytest.param(both(header(receiver="660000"), receiver(pooling_area="660100")), id="the Corps as receiver"),
    ],
)
def test_a_valid_instruction_passes(mutate: Mutation) -> None:
    validate_instruction(mutate(valid_instruction()), TODAY)


# -- D13: the return deadline ---------------------------------------------------------------------


def test_return_deadline_is_six_oclock_beijing_the_next_day() -> None:
    received = bj(2026, 5, 1, 15, 0).astimezone(UTC)
    deadline = return_deadline(received, None, NATIONAL_DEFAULTS.return_hour or 6)
    assert deadline == bj(2026, 5, 2, 6, 0)
    assert deadline.utcoffset() is not None


def test_return_deadline_counts_the_beijing_day_not_the_utc_day() -> None:
    # 00:30 on 2 May in Beijing is still 1 May in UTC: the next Beijing day is 3 May.
    received = bj(2026, 5, 2, 0, 30).astimezone(UTC)
    assert received.date() == date(2026, 5, 1)
    assert return_deadline(received, None, 6) == bj(2026, 5, 3, 6, 0)


@pytest.mark.parametrize(
    ("received", "expected"),
    [
        pytest.param(bj(2026, 5, 1, 0, 0), bj(2026, 5, 2, 6, 0), id="midnight"),
        pytest.param(bj(2026, 5, 1, 5, 59, 59), bj(2026, 5, 2, 6, 0), id="just before six"),
        pytest.param(bj(2026, 5, 1, 6, 0), bj(2026, 5, 2, 6, 0), id="at six"),
        pytest.param(bj(2026, 5, 1, 23, 59, 59), bj(2026, 5, 2, 6, 0), id="last second of the day"),
        pytest.param(bj(2026, 12, 31, 15, 0), bj(2027, 1, 1, 6, 0), id="new year's eve"),
        pytest.param(bj(2028, 2, 28, 12, 0), bj(2028, 2, 29, 6, 0), id="leap day"),
    ],
)
def test_return_deadline_edges(received: datetime, expected: datetime) -> None:
    assert return_deadline(received.astimezone(UTC), None, 6) == expected


def test_return_hour_is_policy() -> None:
    received = bj(2026, 5, 1, 15, 0)
    assert return_deadline(received, None, 0) == bj(2026, 5, 2, 0, 0)
    assert return_deadline(received, None, 23) == bj(2026, 5, 2, 23, 0)


def test_an_earlier_expiry_wins() -> None:
    received = bj(2026, 5, 1, 15, 0)
    expires = bj(2026, 5, 1, 20, 0).astimezone(UTC)
    assert return_deadline(received, expires, 6) == expires


def test_a_later_expiry_does_not() -> None:
    received = bj(2026, 5, 1, 15, 0)
    assert return_deadline(received, bj(2026, 5, 2, 7, 0), 6) == bj(2026, 5, 2, 6, 0)
    assert return_deadline(received, bj(2026, 5, 2, 6, 0), 6) == bj(2026, 5, 2, 6, 0)


def test_delivery_deadline_is_received_plus_seconds_when_earlier() -> None:
    received = bj(2026, 5, 1, 15, 0)
    returns_at = return_deadline(received, None, 6)
    assert delivery_deadline(received, 600, returns_at) == received + timedelta(seconds=600)


def test_delivery_deadline_is_cut_to_the_return_deadline() -> None:
    received = bj(2026, 5, 1, 15, 0)
    returns_at = return_deadline(received, received + timedelta(seconds=60), 6)
    assert delivery_deadline(received, 600, returns_at) == returns_at


@given(
    received=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    seconds=st.integers(min_value=1, max_value=7 * 24 * 3600),
    expiry_after=st.one_of(st.none(), st.integers(min_value=1, max_value=3 * 24 * 3600)),
    return_hour=st.integers(min_value=0, max_value=23),
)
def test_delivery_deadline_never_exceeds_the_return_deadline(
    received: datetime, seconds: int, expiry_after: int | None, return_hour: int
) -> None:
    expires_at = None if expiry_after is None else received + timedelta(seconds=expiry_after)
    returns_at = return_deadline(received, expires_at, return_hour)
    assert returns_at > received
    if expires_at is not None:
        assert returns_at <= expires_at
    assert received < delivery_deadline(received, seconds, returns_at) <= returns_at


# -- policy -----------------------------------------------------------------------------------------


def test_national_defaults_are_the_pilot_values() -> None:
    pilot = Policy(
        single_relation_only=False,
        daily_transfer_limit=3,
        max_transfer_fen=200_000,
        blackout_start_minute=22 * 60,
        blackout_end_minute=6 * 60,
        return_hour=6,
        delivery_deadline_seconds=600,
        mutual_aid_mode=MutualAidMode.BOTH,  # Q1: both regimes unless a province says otherwise
    )
    assert pilot == NATIONAL_DEFAULTS


def test_effective_policy_without_overrides_is_the_national_default() -> None:
    assert effective_policy(Policy()) == NATIONAL_DEFAULTS


def test_effective_policy_merges_overrides_over_the_defaults() -> None:
    merged = effective_policy(Policy(single_relation_only=True, daily_transfer_limit=1, return_hour=0))
    assert merged == dataclasses.replace(
        NATIONAL_DEFAULTS, single_relation_only=True, daily_transfer_limit=1, return_hour=0
    )
    # Every field has a national value, but Q11's per-consumption maximum: none unless a province sets one.
    assert all(getattr(merged, name) is not None for name in Policy.__slots__ if name != "max_consumption_fen")
    assert merged.max_consumption_fen is None


def test_an_override_equal_to_a_falsy_value_is_kept() -> None:
    defaults_true = effective_policy(Policy(single_relation_only=True))
    assert defaults_true.single_relation_only is True
    zero_start = effective_policy(Policy(blackout_start_minute=0))
    assert zero_start.blackout_start_minute == 0


POLICY_RANGES = {
    "daily_transfer_limit": (1, 1_000_000),
    "max_transfer_fen": (1, MAX_AMOUNT_FEN),
    "blackout_start_minute": (0, 1439),
    "blackout_end_minute": (0, 1439),
    "return_hour": (0, 23),
    "delivery_deadline_seconds": (1, 7 * 24 * 3600),
    "max_consumption_fen": (1, MAX_AMOUNT_FEN),
}


@pytest.mark.parametrize("name", sorted(POLICY_RANGES))
def test_validate_policy_accepts_the_bounds(name: str) -> None:
    low, high = POLICY_RANGES[name]
    validate_policy(Policy(**{name: low}))  # type: ignore[arg-type]
    validate_policy(Policy(**{name: high}))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(POLICY_RANGES))
@pytest.mark.parametrize("side", ["below", "above"])
def test_validate_policy_rejects_out_of_range(name: str, side: str) -> None:
    low, high = POLICY_RANGES[name]
    value = low - 1 if side == "below" else high + 1
    with pytest.raises(InvalidArgument) as caught:
        validate_policy(Policy(**{name: value}))  # type: ignore[arg-type]
    assert (caught.value.reason, caught.value.field) == ("INVALID_POLICY", f"policy.{name}")


def test_validate_policy_accepts_no_overrides_and_the_defaults() -> None:
    validate_policy(Policy())
    validate_policy(NATIONAL_DEFAULTS)


def test_every_numeric_policy_field_is_range_checked() -> None:
    numeric = {f.name for f in dataclasses.fields(Policy) if f.name not in ("single_relation_only", "mutual_aid_mode")}
    assert numeric == set(POLICY_RANGES)


@pytest.mark.parametrize("code", ["650000", "620000", "660000", "110000"])
def test_validate_province_code_accepts_province_codes(code: str) -> None:
    validate_province_code(code)


@pytest.mark.parametrize(
    "code",
    [
        "650500",
        "65000",
        "6500000",
        "",
        "gansu0",
        pytest.param("６５0000", id="full-width digits"),
    ],
)
def test_validate_province_code_rejects_other_strings(code: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_province_code(code, "province.code")
    assert (caught.value.reason, caught.value.field) == ("INVALID_PROVINCE_CODE", "province.code")


# -- outbox backoff ---------------------------------------------------------------------------------


def ceiling(backoff: Backoff, attempts: int) -> float:
    return min(backoff.max_seconds, backoff.base_seconds * float(2 ** max(0, attempts - 1)))


def test_backoff_grows_then_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    backoff = Backoff(base_seconds=0.5, max_seconds=10.0)
    delays = [backoff.delay(attempts).total_seconds() for attempts in range(1, 10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]


def test_backoff_jitter_is_between_half_and_all_of_the_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, float]] = []

    def lowest(low: float, high: float) -> float:
        seen.append((low, high))
        return low

    monkeypatch.setattr(random, "uniform", lowest)
    backoff = Backoff(base_seconds=0.2, max_seconds=30.0)
    assert backoff.delay(3).total_seconds() == pytest.approx(0.4)
    assert seen == [(0.5, 1.0)]


def test_backoff_stays_within_its_bounds_with_real_randomness() -> None:
    backoff = Backoff(base_seconds=0.2, max_seconds=30.0)
    for attempts in range(0, 20):
        top = ceiling(backoff, attempts)
        for _ in range(20):
            delay = backoff.delay(attempts).total_seconds()
            assert 0.5 * top - 1e-6 <= delay <= top + 1e-6


def test_backoff_survives_very_many_attempts() -> None:
    # Outcome notifications retry without end; 2**1024 would overflow a float.
    backoff = Backoff(base_seconds=0.2, max_seconds=30.0)
    assert backoff.delay(5000) <= timedelta(seconds=30)


# -- key validity windows ---------------------------------------------------------------------------

FROM = datetime(2026, 1, 1, tzinfo=UTC)
UNTIL = datetime(2027, 1, 1, tzinfo=UTC)
TICK = timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("at", "valid"),
    [
        pytest.param(FROM - TICK, False, id="just before valid_from"),
        pytest.param(FROM, True, id="at valid_from"),
        pytest.param(FROM.astimezone(BEIJING), True, id="at valid_from, written in Beijing time"),
        pytest.param(UNTIL - TICK, True, id="just before valid_until"),
        pytest.param(UNTIL, False, id="at valid_until"),
        pytest.param(UNTIL.astimezone(BEIJING), False, id="at valid_until, written in Beijing time"),
    ],
)
def test_key_window_includes_valid_from_and_excludes_valid_until(at: datetime, valid: bool) -> None:
    key = ProvinceKey("xj-2026", b"\x01" * 32, valid_from=FROM, valid_until=UNTIL)
    assert key.is_valid_at(at) is valid


def test_open_ended_key_windows() -> None:
    now = datetime(2026, 5, 1, tzinfo=UTC)
    assert ProvinceKey("k", b"\x01" * 32).is_valid_at(now)
    assert ProvinceKey("k", b"\x01" * 32, valid_from=now).is_valid_at(now + timedelta(days=3650))
    assert not ProvinceKey("k", b"\x01" * 32, valid_from=now + TICK).is_valid_at(now)
    assert ProvinceKey("k", b"\x01" * 32, valid_until=now + TICK).is_valid_at(now)
    assert not ProvinceKey("k", b"\x01" * 32, valid_until=now).is_valid_at(now)
