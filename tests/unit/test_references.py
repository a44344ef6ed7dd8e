"""Opaque references (evidence, payments, letter versions): identifiers only, never a name or an ID number (D19)."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.errors import InvalidArgument
from gateway.domain.identity import check_character
from gateway.domain.references import looks_like_id_number, validate_reference

CHILD_ID = "620102201508160027"  # valid: born 2015-08-16
STANDARD_ID = "11010519491231002X"  # GB 11643's example, its check character X
FIRST_GENERATION_ID = "110105491231002"  # 15 digits: Beijing, born (19)49-12-31


def refusal(value: str, max_length: int = 64) -> tuple[str, str | None]:
    with pytest.raises(InvalidArgument) as caught:
        validate_reference(value, "x.ref", max_length=max_length)
    # The message never repeats the value: it may be personal data.
    assert value not in caught.value.message or not value
    return caught.value.reason, caught.value.field


@pytest.mark.parametrize("value", [
    "FACE-0123456789ABCDEF", "HUKOU-2026:0001/A.7", "2024-01", "ICBC", "102100099996", "ICBC-2026/11.22_1",
    "x" * 64,
    "62010220150816002",  # 17 digits: no ID number
    CHILD_ID[:-1] + "1",  # one digit changed: not a valid ID number
    "1101054912310021",  # 16 digits: neither kind of ID number
    "SN-12345678901234567890",  # a long serial number with no valid ID number in it
])
def test_opaque_references_are_taken(value: str) -> None:
    validate_reference(value, "x.ref", max_length=64)


@pytest.mark.parametrize("value", [
    "", "x" * 65, "王小红", "Wang Xiaohong", "ev\x00", "ev\x1b[31m", "ev\n", "ev\u202e", "-leading-dash",
    ".hidden", "=HYPERLINK(1)", "@ref", "+1", "ev😀", "６２０１０２", "ref;drop", "a b",
])
def test_free_text_is_refused_as_an_invalid_reference(value: str) -> None:
    assert refusal(value) == ("INVALID_REFERENCE", "x.ref")


@pytest.mark.parametrize("value", [
    CHILD_ID, STANDARD_ID, STANDARD_ID.lower(), f"HUKOU-{CHILD_ID}-1", f"EV{CHILD_ID}7",
    f"{CHILD_ID[:6]}-{CHILD_ID[6:14]}.{CHILD_ID[14:]}", f"{CHILD_ID[:9]}_{CHILD_ID[9:]}",
    FIRST_GENERATION_ID, f"OLD-{FIRST_GENERATION_ID}", f"{FIRST_GENERATION_ID[:6]}/{FIRST_GENERATION_ID[6:]}",
])
def test_a_reference_holding_an_id_number_is_refused_with_its_own_reason(value: str) -> None:
    assert refusal(value, max_length=128) == ("REFERENCE_LOOKS_LIKE_ID_NUMBER", "x.ref")


def test_the_field_and_a_reason_of_the_fields_own_are_reported() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_reference("中国工商银行", "payments[2].bank", max_length=64, reason="INVALID_BANK")
    assert (caught.value.reason, caught.value.field) == ("INVALID_BANK", "payments[2].bank")
    with pytest.raises(InvalidArgument) as caught:  # an ID number keeps its own reason, whatever the field's
        validate_reference(CHILD_ID, "payments[2].bank", max_length=64, reason="INVALID_BANK")
    assert caught.value.reason == "REFERENCE_LOOKS_LIKE_ID_NUMBER"


@given(st.dates(date(1900, 1, 1), date(2030, 12, 31)), st.sampled_from(["11", "62", "65", "66"]),
       st.integers(0, 999), st.text("AZ-._", max_size=4), st.text("AZ-._", max_size=4))
def test_every_valid_id_number_is_found_wherever_it_sits(born: date, province: str, sequence: int, head: str,
                                                         tail: str) -> None:
    first17 = f"{province}0102{born:%Y%m%d}{sequence:03d}"
    assert looks_like_id_number(head + first17 + check_character(first17) + tail)
