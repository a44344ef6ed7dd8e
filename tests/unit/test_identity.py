"""Unit tests for resident ID numbers, ages and masking (domain D1, D5, D6, D19)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.domain.identity import (
    PROVINCE_PREFIXES,
    IdNumber,
    IdNumberProblem,
    Sex,
    age_on,
    check_character,
    check_id_number,
    mask_id_number,
    mask_name,
    normalise_id_number,
)

# A fixed "today" keeps the tests independent of the calendar they run on.
TODAY = date(2025, 6, 1)

VECTORS = {
    "11010519491231002X": (date(1949, 12, 31), Sex.FEMALE),
    "440524188001010014": (date(1880, 1, 1), Sex.MALE),
    "650502199001011230": (date(1990, 1, 1), Sex.MALE),
    "652201198506152316": (date(1985, 6, 15), Sex.MALE),
    "620102201003010023": (date(2010, 3, 1), Sex.FEMALE),
}
# Not among domain.md's vectors; checked here and found valid (female, born 1965-05-12).
EXTRA_VALID = "620102196505120026"
ALL_VALID = [*VECTORS, EXTRA_VALID]

CHARACTERS = "0123456789X"


def reference_is_valid_check(value: str) -> bool:
    """MOD 11-2 as the standard states it over all 18 positions, independent of the module's table.

    Position i counted from the right (check character at i = 1) has weight 2^(i-1) mod 11, X
    stands for 10, and the weighted sum of a valid number is congruent to 1 modulo 11.
    """
    digits = [10 if c == "X" else int(c) for c in value]
    total = sum(d * pow(2, 17 - index, 11) for index, d in enumerate(digits))
    return total % 11 == 1


def reference_check_character(first17: str) -> str:
    return next(c for c in CHARACTERS if reference_is_valid_check(first17 + c))


def reference_age(birth: date, on: date) -> int:
    """Count the anniversaries passed, moving a 29 February birthday to 1 March in common years."""

    def anniversary(year: int) -> date:
        try:
            return date(year, birth.month, birth.day)
        except ValueError:
            return date(year, 3, 1)

    years = on.year - birth.year
    while years > 0 and anniversary(birth.year + years) > on:
        years -= 1
    return years


def with_check(first17: str) -> str:
    return first17 + reference_check_character(first17)


# --- the vectors -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ALL_VALID)
def test_vectors_are_valid(raw: str) -> None:
    assert check_id_number(raw, TODAY) is None
    assert reference_is_valid_check(raw)
    assert check_character(raw[:17]) == raw[17]


def test_extra_number_620102196505120026_is_valid() -> None:
    id_number = IdNumber.parse(EXTRA_VALID, TODAY)
    assert id_number.birth_date == date(1965, 5, 12)
    assert id_number.sex is Sex.FEMALE
    assert id_number.province_prefix == "62"


@pytest.mark.parametrize(("raw", "expected"), VECTORS.items())
def test_vector_birth_date_and_sex(raw: str, expected: tuple[date, Sex]) -> None:
    id_number = IdNumber.parse(raw, TODAY)
    assert (id_number.birth_date, id_number.sex) == expected
    assert id_number.province_prefix == raw[:2]


def test_lowercase_x_is_accepted_and_normalised() -> None:
    raw = "11010519491231002x"
    assert normalise_id_number(raw) == "11010519491231002X"
    assert check_id_number(raw, TODAY) is None
    parsed = IdNumber.parse(raw, TODAY)
    assert parsed.value == "11010519491231002X"
    assert parsed == IdNumber("11010519491231002x") == IdNumber("11010519491231002X")


def test_normalise_changes_nothing_else() -> None:
    assert normalise_id_number(" 650502199001011230") == " 650502199001011230"
    assert normalise_id_number("abcx") == "abcX"
    assert normalise_id_number("x1") == "x1"


@pytest.mark.parametrize("raw", ALL_VALID)
def test_changing_any_one_digit_makes_a_vector_invalid(raw: str) -> None:
    for position in range(18):
        for replacement in "0123456789":
            if replacement == raw[position]:
                continue
            changed = raw[:position] + replacement + raw[position + 1 :]
            assert check_id_number(changed, TODAY) is not None, (position, replacement)


# --- each problem ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", IdNumberProblem.WRONG_LENGTH),
        ("65050219900101123", IdNumberProblem.WRONG_LENGTH),
        ("6505021990010112300", IdNumberProblem.WRONG_LENGTH),
        ("650502900101123", IdNumberProblem.WRONG_LENGTH),  # old 15-digit form is not accepted
        ("6505021990O1011230", IdNumberProblem.NOT_DIGITS),  # letter O for zero
        ("65050219900101123Y", IdNumberProblem.NOT_DIGITS),
        ("X50502199001011230", IdNumberProblem.NOT_DIGITS),
        ("65050219900101123 ", IdNumberProblem.NOT_DIGITS),
        ("６50502199001011230", IdNumberProblem.NOT_DIGITS),  # full-width digit
        (with_check("71010219900101123"), IdNumberProblem.UNKNOWN_PROVINCE_PREFIX),  # Taiwan
        (with_check("81000019900101123"), IdNumberProblem.UNKNOWN_PROVINCE_PREFIX),  # HK permit
        (with_check("00000019900101123"), IdNumberProblem.UNKNOWN_PROVINCE_PREFIX),
        (with_check("65050219900230123"), IdNumberProblem.INVALID_BIRTH_DATE),
        (with_check("65050219901301123"), IdNumberProblem.INVALID_BIRTH_DATE),
        (with_check("65050219900100123"), IdNumberProblem.INVALID_BIRTH_DATE),
        (with_check("65050200000101123"), IdNumberProblem.INVALID_BIRTH_DATE),  # year 0
        (with_check("65050220250602123"), IdNumberProblem.BIRTH_DATE_IN_FUTURE),
        ("650502199001011231", IdNumberProblem.BAD_CHECK_CHARACTER),
        ("65050219900101123X", IdNumberProblem.BAD_CHECK_CHARACTER),
        ("110105194912310020", IdNumberProblem.BAD_CHECK_CHARACTER),
    ],
)
def test_each_problem(raw: str, problem: IdNumberProblem) -> None:
    assert check_id_number(raw, TODAY) is problem
    with pytest.raises(ValueError) as raised:
        IdNumber.parse(raw, TODAY)
    # The reason is the whole message, and the number itself never appears in it (D19).
    assert str(raised.value) == problem.value
    if raw:
        assert raw not in str(raised.value)


def test_problem_values_are_stable_upper_snake_reasons() -> None:
    for problem in IdNumberProblem:
        assert problem.value == problem.name
        assert problem.value.isupper()


def test_born_today_is_valid_and_tomorrow_is_not() -> None:
    born_today = with_check("650502" + TODAY.strftime("%Y%m%d") + "123")
    assert check_id_number(born_today, TODAY) is None
    assert check_id_number(born_today, TODAY - timedelta(days=1)) is IdNumberProblem.BIRTH_DATE_IN_FUTURE


def test_hami_code_from_before_2016_is_accepted() -> None:
    # 6522xx no longer exists in today's division list; only the province prefix is checked.
    assert check_id_number("652201198506152316", TODAY) is None


def test_province_prefixes() -> None:
    assert len(PROVINCE_PREFIXES) == 32
    assert {"11", "65", "66", "54", "46"} <= PROVINCE_PREFIXES
    assert not {"71", "81", "82", "83", "00", "99"} & PROVINCE_PREFIXES


def test_check_character_refuses_bad_input_without_echoing_it() -> None:
    for bad in ["", "1234567890123456", "123456789012345678", "1234567890123456X"]:
        with pytest.raises(ValueError) as raised:
            check_character(bad)
        assert bad == "" or bad not in str(raised.value)


def test_id_number_constructor_refuses_malformed_values() -> None:
    with pytest.raises(ValueError, match=r"^BAD_CHECK_CHARACTER$"):
        IdNumber("650502199001011231")
    with pytest.raises(ValueError, match=r"^WRONG_LENGTH$"):
        IdNumber("650502")


def test_id_number_repr_is_masked() -> None:
    id_number = IdNumber.parse("650502199001011230", TODAY)
    assert "650502199001011230" not in repr(id_number)
    assert "650502199001011230" not in str(id_number)
    assert "650502********1230" in repr(id_number)


# --- 29 February --------------------------------------------------------------------------------


def test_29_february_birth_in_leap_year_is_valid() -> None:
    id_number = IdNumber.parse(with_check("65050220000229123"), TODAY)
    assert id_number.birth_date == date(2000, 2, 29)
    assert check_id_number(with_check("65050219960229456"), TODAY) is None


@pytest.mark.parametrize("year", ["1900", "2001", "2023", "2100"])
def test_29_february_birth_in_common_year_is_invalid(year: str) -> None:
    raw = with_check(f"650502{year}0229123")
    assert check_id_number(raw, date(2200, 1, 1)) is IdNumberProblem.INVALID_BIRTH_DATE


# --- ages (D6) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "on", "age"),
    [
        # The 16th birthday itself gives 16, the day before 15 (D6 face-verification threshold).
        (date(2010, 3, 1), date(2026, 3, 1), 16),
        (date(2010, 3, 1), date(2026, 2, 28), 15),
        (date(2008, 2, 29), date(2024, 2, 29), 16),  # 16th birthday falls in a leap year
        (date(2008, 2, 29), date(2024, 2, 28), 15),
        (date(2004, 2, 29), date(2020, 2, 29), 16),
        (date(2005, 2, 28), date(2021, 2, 28), 16),
        (date(2005, 2, 28), date(2021, 2, 27), 15),
        # Born 29 February: one year older on 1 March in a common year, on 29 February in a leap year.
        (date(2000, 2, 29), date(2001, 2, 28), 0),
        (date(2000, 2, 29), date(2001, 3, 1), 1),
        (date(2000, 2, 29), date(2004, 2, 28), 3),
        (date(2000, 2, 29), date(2004, 2, 29), 4),
        (date(2000, 2, 29), date(2017, 2, 28), 16),
        (date(2000, 2, 29), date(2017, 3, 1), 17),
        (date(1896, 2, 29), date(1900, 2, 28), 3),  # 1900 is a common year
        (date(1896, 2, 29), date(1900, 3, 1), 4),
        (date(1990, 1, 1), date(1990, 1, 1), 0),
        (date(1990, 12, 31), date(1991, 12, 30), 0),
        (date(1990, 12, 31), date(1991, 12, 31), 1),
    ],
)
def test_age_on(birth: date, on: date, age: int) -> None:
    assert age_on(birth, on) == age


def test_age_on_before_birth_is_refused() -> None:
    with pytest.raises(ValueError):
        age_on(date(2000, 1, 2), date(2000, 1, 1))


def test_vector_born_2010_03_01_turns_16_on_2026_03_01() -> None:
    birth = IdNumber.parse("620102201003010023", TODAY).birth_date
    assert age_on(birth, date(2026, 3, 1)) == 16
    assert age_on(birth, date(2026, 2, 28)) == 15


# --- masking (D19) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("650502199001011230", "650502********1230"),
        ("11010519491231002X", "110105********002X"),
        ("", ""),
        ("123", "***"),
        ("123456789", "*********"),
        ("1234567890", "**********"),
        ("650502900101123", "***************"),  # too short: head and tail would reveal it
        ("6505021990010112301", "650502*********2301"),
    ],
)
def test_mask_id_number(raw: str, masked: str) -> None:
    assert mask_id_number(raw) == masked


def test_id_number_masked_property() -> None:
    assert IdNumber.parse("650502199001011230", TODAY).masked == "650502********1230"
    assert IdNumber.parse("11010519491231002x", TODAY).masked == "110105********002X"


@given(st.text(max_size=40))
@settings(max_examples=300)
def test_mask_id_number_never_raises_and_hides_the_middle(raw: str) -> None:
    masked = mask_id_number(raw)
    assert len(masked) == len(raw)
    if len(raw) >= 18:
        assert masked[6:-4] == "*" * (len(raw) - 10)
    else:
        assert set(masked) <= {"*"}


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        ("张三", "张*"),
        ("张三丰", "张*"),
        ("张", "张*"),
        ("", ""),
        ("欧阳娜娜", "欧*"),
        ("  李四 ", "李*"),
        ("   ", ""),
    ],
)
def test_mask_name(name: str, masked: str) -> None:
    assert mask_name(name) == masked


# --- properties -------------------------------------------------------------------------------

province_prefixes = st.sampled_from(sorted(PROVINCE_PREFIXES))
digit_strings = st.text(alphabet="0123456789", min_size=1, max_size=1)
past_dates = st.dates(min_value=date(1900, 1, 1), max_value=TODAY)


@st.composite
def valid_id_numbers(draw: st.DrawFn) -> str:
    prefix = draw(province_prefixes)
    area = draw(st.text(alphabet="0123456789", min_size=4, max_size=4))
    birth = draw(past_dates)
    sequence = draw(st.text(alphabet="0123456789", min_size=3, max_size=3))
    return with_check(prefix + area + birth.strftime("%Y%m%d") + sequence)


@given(valid_id_numbers())
@settings(max_examples=300)
def test_every_well_built_number_is_accepted(raw: str) -> None:
    assert check_id_number(raw, TODAY) is None
    id_number = IdNumber.parse(raw, TODAY)
    assert id_number.birth_date.strftime("%Y%m%d") == raw[6:14]
    assert id_number.sex is (Sex.MALE if int(raw[16]) % 2 else Sex.FEMALE)
    assert check_character(raw[:17]) == raw[17]


@given(valid_id_numbers(), st.integers(min_value=0, max_value=17), st.sampled_from(CHARACTERS))
@settings(max_examples=300)
def test_any_single_character_change_is_refused(raw: str, position: int, replacement: str) -> None:
    if replacement == raw[position]:
        replacement = CHARACTERS[(CHARACTERS.index(replacement) + 1) % len(CHARACTERS)]
    changed = raw[:position] + replacement + raw[position + 1 :]
    assert check_id_number(changed, TODAY) is not None


# Dates around the end of February, so leap days and their neighbours come up often.
end_of_february = st.builds(
    lambda year, back: date(year, 3, 1) - timedelta(days=back),
    st.integers(min_value=1900, max_value=2100),
    st.integers(min_value=0, max_value=2),
)
any_dates = st.one_of(st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31)), end_of_february)


@given(any_dates, any_dates)
@settings(max_examples=300)
@example(date(2000, 2, 29), date(2001, 2, 28))
@example(date(2000, 2, 29), date(2001, 3, 1))
@example(date(2000, 2, 29), date(2100, 2, 28))
@example(date(2000, 2, 29), date(2100, 3, 1))
def test_age_on_agrees_with_reference(first: date, second: date) -> None:
    birth, on = min(first, second), max(first, second)
    assert age_on(birth, on) == reference_age(birth, on)
