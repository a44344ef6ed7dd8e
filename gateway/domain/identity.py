"""Resident ID numbers (GB 11643, rule D1), the ages and sexes they imply, and personal-data masking (D19)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from enum import Enum

# Provincial-level divisions of GB/T 2260 plus 66, under which the Xinjiang Production and
# Construction Corps runs its own medical insurance (domain.md code table).
PROVINCE_PREFIXES: frozenset[str] = frozenset(
    {
        "11", "12", "13", "14", "15",
        "21", "22", "23",
        "31", "32", "33", "34", "35", "36", "37",
        "41", "42", "43", "44", "45", "46",
        "50", "51", "52", "53", "54",
        "61", "62", "63", "64", "65",
        "66",
    }
)  # fmt: skip

ID_NUMBER_LENGTH = 18

_CHECK_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARACTERS = "10X98765432"

# [0-9] rather than \d or str.isdigit(): those accept full-width and other non-ASCII digits,
# which GB 11643 does not allow and which int() would silently turn into numbers.
_FIRST_17_DIGITS = re.compile(r"[0-9]{17}")
_WELL_FORMED = re.compile(r"[0-9]{17}[0-9X]")

# Showing first 6 + last 4 only hides anything when the middle is long enough; below a full
# ID number's length the visible parts would reveal most or all of the value.
_MASK_KEEP_HEAD = 6
_MASK_KEEP_TAIL = 4
# 18-character resident ID numbers (17 digits and a check character) standing alone in text.
_ID_NUMBER_IN_TEXT = re.compile(r"(?<![0-9A-Za-z])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")


class IdNumberProblem(Enum):
    """Why a string is not a valid resident ID number; values are stable reasons safe to log."""

    WRONG_LENGTH = "WRONG_LENGTH"
    # The first 17 characters are not all ASCII digits, or the 18th is neither a digit nor X.
    NOT_DIGITS = "NOT_DIGITS"
    UNKNOWN_PROVINCE_PREFIX = "UNKNOWN_PROVINCE_PREFIX"
    INVALID_BIRTH_DATE = "INVALID_BIRTH_DATE"
    BIRTH_DATE_IN_FUTURE = "BIRTH_DATE_IN_FUTURE"
    BAD_CHECK_CHARACTER = "BAD_CHECK_CHARACTER"


class Sex(Enum):
    """Sex as encoded by the parity of the 17th digit of the ID number."""

    MALE = "MALE"
    FEMALE = "FEMALE"


def normalise_id_number(raw: str) -> str:
    """Return `raw` with a lowercase check character x written as X; nothing else changes."""
    return raw[:-1] + "X" if raw.endswith("x") else raw


def check_character(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character for the first 17 digits of an ID number."""
    if _FIRST_17_DIGITS.fullmatch(first17) is None:
        # The argument itself stays out of the message: it is (part of) an ID number (D19).
        raise ValueError("expected exactly 17 ASCII digits")
    total = sum(int(digit) * weight for digit, weight in zip(first17, _CHECK_WEIGHTS, strict=True))
    return _CHECK_CHARACTERS[total % 11]


def _birth_date_of(value: str) -> date | None:
    try:
        return date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return None


def check_id_number(raw: str, today: date) -> IdNumberProblem | None:
    """Return why `raw` is not a valid ID number on `today` (D1), or None if it is valid."""
    if len(raw) != ID_NUMBER_LENGTH:
        return IdNumberProblem.WRONG_LENGTH
    value = normalise_id_number(raw)
    if _WELL_FORMED.fullmatch(value) is None:
        return IdNumberProblem.NOT_DIGITS
    # Only the province is checked: address codes record the division at registration, so
    # people born in Hami before 2016 still carry 6522xx although that code no longer exists.
    if value[:2] not in PROVINCE_PREFIXES:
        return IdNumberProblem.UNKNOWN_PROVINCE_PREFIX
    birth = _birth_date_of(value)
    if birth is None:
        return IdNumberProblem.INVALID_BIRTH_DATE
    if birth > today:
        return IdNumberProblem.BIRTH_DATE_IN_FUTURE
    if check_character(value[:17]) != value[17]:
        return IdNumberProblem.BAD_CHECK_CHARACTER
    return None


@dataclass(frozen=True, slots=True, repr=False)
class IdNumber:
    """A well-formed, normalised resident ID number; its repr is masked so it cannot leak into logs."""

    value: str

    def __post_init__(self) -> None:
        # Without a reference day only "not in the future" cannot be checked here; parse() adds it.
        problem = check_id_number(self.value, date.max)
        if problem is not None:
            raise ValueError(problem.value)
        # Storing the normalised form keeps equality and hashing the same for x and X.
        object.__setattr__(self, "value", normalise_id_number(self.value))

    @classmethod
    def parse(cls, raw: str, today: date) -> IdNumber:
        """Validate and normalise `raw`; raise ValueError whose message is the problem's reason only."""
        problem = check_id_number(raw, today)
        if problem is not None:
            raise ValueError(problem.value)
        return cls(normalise_id_number(raw))

    @property
    def birth_date(self) -> date:
        birth = _birth_date_of(self.value)
        # Unreachable: __post_init__ refused invalid dates; the assert only narrows the type.
        assert birth is not None
        return birth

    @property
    def sex(self) -> Sex:
        return Sex.MALE if int(self.value[16]) % 2 == 1 else Sex.FEMALE

    @property
    def province_prefix(self) -> str:
        return self.value[:2]

    @property
    def masked(self) -> str:
        return mask_id_number(self.value)

    def __repr__(self) -> str:
        return f"IdNumber(masked={self.masked!r})"


def mask_id_number(raw: str) -> str:
    """Mask any string given as an ID number to first 6 + `*` + last 4 (D19); never raises.

    Strings shorter than a full ID number are masked entirely: with fewer than 8 hidden
    characters the visible head and tail would give away most or all of the value.
    """
    if len(raw) < ID_NUMBER_LENGTH:
        return "*" * len(raw)
    hidden = len(raw) - _MASK_KEEP_HEAD - _MASK_KEEP_TAIL
    return raw[:_MASK_KEEP_HEAD] + "*" * hidden + raw[-_MASK_KEEP_TAIL:]


def mask_id_numbers_in(text: str) -> str:
    """`text` with every ID number standing alone in it masked as mask_id_number does (D19)."""
    return _ID_NUMBER_IN_TEXT.sub(lambda m: mask_id_number(m.group(0)), text)


def mask_name(name: str) -> str:
    """Mask a personal name to its first character followed by `*` (D19); empty stays empty."""
    # Surrounding blanks would otherwise make the "first character" a space and hide nothing useful.
    stripped = name.strip()
    return stripped[:1] + "*" if stripped else ""


def age_on(birth: date, on: date) -> int:
    """Age in full years on the day `on` (D6); raises ValueError if `on` is before `birth`."""
    if on < birth:
        raise ValueError("event date is before the birth date")
    years = on.year - birth.year
    # Comparing (month, day) also handles 29 February: in a common year no day equals (2, 29),
    # so 28 February still counts as before the birthday and 1 March as after, as D6 requires.
    if (on.month, on.day) < (birth.month, birth.day):
        years -= 1
    return years
