"""Opaque references sent by provinces and operators (evidence, payments, letter versions): never free text."""

from __future__ import annotations

import re
from datetime import date

from gateway.domain import reasons
from gateway.domain.errors import InvalidArgument
from gateway.domain.identity import ID_NUMBER_LENGTH, PROVINCE_PREFIXES, check_id_number

REFERENCE_CHARACTERS = "A-Za-z0-9_.:/-"
# ASCII only, no spaces: a reference names a record kept elsewhere, and a name or a sentence cannot be
# written in it. It starts with a letter or digit, so no export cell or path segment starts with `-` or `.`.
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/\-]*")
_SEPARATORS = re.compile(r"[_.:/\-]")
# A first-generation (15-digit) ID number has no check character, so only a run of exactly 15 digits
# counts: a longer serial number would otherwise hold one by chance too often.
_FIFTEEN_DIGITS = re.compile(r"(?<![0-9])[0-9]{15}(?![0-9])")


def _is_first_generation_id(digits: str) -> bool:
    """6-digit address, birth date YYMMDD (in the 1900s), 3-digit sequence: the pre-1999 resident ID."""
    if digits[:2] not in PROVINCE_PREFIXES:
        return False
    try:
        date(1900 + int(digits[6:8]), int(digits[8:10]), int(digits[10:12]))
    except ValueError:
        return False
    return True


def looks_like_id_number(value: str) -> bool:
    """Whether `value` holds a resident ID number, once separators such as `-` or `.` are ignored (D19).

    Any 18 characters forming a valid ID number (D1: known province, real birth date, check character)
    count, as does a run of exactly 15 digits shaped like a first-generation ID.
    """
    compact = _SEPARATORS.sub("", value)
    for start in range(len(compact) - ID_NUMBER_LENGTH + 1):
        # date.max: a birth date in the future still makes the value look like an ID number.
        if check_id_number(compact[start:start + ID_NUMBER_LENGTH], date.max) is None:
            return True
    return any(_is_first_generation_id(run) for run in _FIFTEEN_DIGITS.findall(compact))


def validate_reference(value: str, field: str, *, max_length: int, reason: str = reasons.INVALID_REFERENCE) -> None:
    """Refuse `value` unless it is an opaque identifier: 1 to `max_length` characters of
    [A-Za-z0-9._:/-] starting with a letter or digit, holding no ID number.

    `reason` names a malformed value of this field; a value holding an ID number is always
    REFERENCE_LOOKS_LIKE_ID_NUMBER. Messages never repeat the value (it may be personal data, D19).
    """
    # The length first: the pattern and the ID search then never run over an enormous value.
    if not value or len(value) > max_length or not _REFERENCE.fullmatch(value):
        raise InvalidArgument(f"{field} is an opaque reference: 1-{max_length} characters from "
                              f"[{REFERENCE_CHARACTERS}], starting with a letter or digit", reason=reason, field=field)
    if looks_like_id_number(value):
        raise InvalidArgument(f"{field} holds what looks like a resident ID number; a reference must not carry "
                              "personal data (D19)", reason=reasons.REFERENCE_LOOKS_LIKE_ID_NUMBER, field=field)
