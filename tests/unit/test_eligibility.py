"""Unit tests of the eligibility rules D1–D6: one table per rule at its boundaries, then properties."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.eligibility import (
    AttestationMethod,
    AttestationRequirement,
    MemberStatus,
    RelationKind,
    Violation,
    as_told_to_giver_province,
    attestation_requirement,
    check_attestation,
    check_different_persons,
    check_eligibility,
    check_giver_insurance,
    check_id_numbers,
    check_receiver_insurance,
    check_relation_code,
    check_relation_consistency,
    check_settlement,
    parse_valid_id,
    relation_kind,
    relation_sex,
)
from gateway.domain.identity import IdNumber, Sex, check_character

# A fixed event day keeps the tests independent of the calendar they run on.
ON = date(2026, 5, 1)

# domain.md vectors (and the one test_identity.py found valid).
GIVER_MAN_1990 = "650502199001011230"  # male, born 1990-01-01 (Hami)
MOTHER_1965 = "620102196505120026"  # female, born 1965-05-12 (Lanzhou)
GIRL_2010 = "620102201003010023"  # female, born 2010-03-01
MAN_1985 = "652201198506152316"  # male, born 1985-06-15 (pre-2016 Hami code)

EMPLOYEE = MemberStatus(insutype="310", status_normal=True, settlement_suspended=False)
RESIDENT = MemberStatus(insutype="390", status_normal=True, settlement_suspended=False)


def make_id(birth: date, sex: Sex, area: str = "620102", serial: int = 1) -> str:
    """A valid ID number whose check character comes from identity.check_character."""
    sequence = serial * 10 + (1 if sex is Sex.MALE else 2)  # 17th digit odd = male, even = female
    first17 = f"{area}{birth:%Y%m%d}{sequence:03d}"
    return first17 + check_character(first17)


def idn(raw: str) -> IdNumber:
    return IdNumber.parse(raw, ON)


def corrupt(raw: str) -> str:
    """Change one digit of the sequence: the check character no longer matches (D1)."""
    return raw[:15] + str((int(raw[15]) + 1) % 10) + raw[16:]


BOY_2012 = make_id(date(2012, 7, 9), Sex.MALE, serial=3)
WOMAN_1992 = make_id(date(1992, 4, 2), Sex.FEMALE, serial=4)
MAN_1960 = make_id(date(1960, 8, 20), Sex.MALE, serial=5)
WOMAN_1940 = make_id(date(1940, 2, 3), Sex.FEMALE, serial=6)
SAME_BIRTHDAY_AS_GIVER = make_id(date(1990, 1, 1), Sex.FEMALE, serial=7)


def test_made_ids_are_valid_and_carry_birth_and_sex() -> None:
    for raw, birth, sex in [
        (BOY_2012, date(2012, 7, 9), Sex.MALE),
        (WOMAN_1992, date(1992, 4, 2), Sex.FEMALE),
        (MAN_1960, date(1960, 8, 20), Sex.MALE),
        (WOMAN_1940, date(1940, 2, 3), Sex.FEMALE),
    ]:
        parsed = idn(raw)
        assert (parsed.birth_date, parsed.sex) == (birth, sex)


def v(reason: str, rule: str, field: str) -> Violation:
    return Violation(reason, rule, field)


# --- D1: ID numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("giver", "receiver", "expected"),
    [
        (GIVER_MAN_1990, MOTHER_1965, []),
        (GIVER_MAN_1990, "11010519491231002x", []),  # lowercase x is accepted
        (corrupt(GIVER_MAN_1990), MOTHER_1965, [v("INVALID_ID_NUMBER", "D1", "giver.id_number")]),
        (GIVER_MAN_1990, corrupt(MOTHER_1965), [v("INVALID_ID_NUMBER", "D1", "receiver.id_number")]),
        (
            "",
            "not an id",
            [v("INVALID_ID_NUMBER", "D1", "giver.id_number"), v("INVALID_ID_NUMBER", "D1", "receiver.id_number")],
        ),
        # Born the day after the event date: not yet a valid ID number on that date.
        (
            GIVER_MAN_1990,
            make_id(ON + timedelta(days=1), Sex.MALE),
            [v("INVALID_ID_NUMBER", "D1", "receiver.id_number")],
        ),
    ],
)
def test_d1_id_numbers(giver: str, receiver: str, expected: list[Violation]) -> None:
    assert check_id_numbers(giver, receiver, ON) == expected


def test_d1_born_on_the_event_date_is_valid() -> None:
    assert check_id_numbers(GIVER_MAN_1990, make_id(ON, Sex.MALE), ON) == []


def test_parse_valid_id_normalises_or_returns_none() -> None:
    parsed = parse_valid_id("11010519491231002x", ON)
    assert parsed is not None and parsed.value == "11010519491231002X"
    assert parse_valid_id(corrupt(GIVER_MAN_1990), ON) is None


# --- D2: insurance of giver and receiver, different persons --------------------------------------


@pytest.mark.parametrize(
    ("status", "reasons"),
    [
        (EMPLOYEE, []),
        (RESIDENT, ["GIVER_NOT_EMPLOYEE"]),
        (MemberStatus("310", status_normal=False, settlement_suspended=False), ["GIVER_NOT_INSURED"]),
        (
            MemberStatus("390", status_normal=False, settlement_suspended=False),
            ["GIVER_NOT_EMPLOYEE", "GIVER_NOT_INSURED"],
        ),
        (MemberStatus.not_found(), ["GIVER_NOT_INSURED"]),
    ],
)
def test_d2_giver_insurance(status: MemberStatus, reasons: list[str]) -> None:
    violations = check_giver_insurance(status)
    assert [x.reason for x in violations] == reasons
    assert all(x.rule == "D2" and x.field == "giver" for x in violations)


@pytest.mark.parametrize(
    ("status", "eligible"),
    [
        (EMPLOYEE, True),
        (RESIDENT, True),
        (MemberStatus("320", status_normal=True, settlement_suspended=False), False),
        (MemberStatus("", status_normal=True, settlement_suspended=False), False),
        (MemberStatus("390", status_normal=False, settlement_suspended=False), False),
        (MemberStatus.not_found(), False),
    ],
)
def test_d2_receiver_insurance(status: MemberStatus, eligible: bool) -> None:
    expected = [] if eligible else [v("RECEIVER_NOT_INSURED", "D2", "receiver")]
    assert check_receiver_insurance(status) == expected


@pytest.mark.parametrize(
    ("giver", "receiver", "same"),
    [
        (GIVER_MAN_1990, GIVER_MAN_1990, True),
        ("11010519491231002X", "11010519491231002x", True),  # normalised before comparing
        (GIVER_MAN_1990, MOTHER_1965, False),
    ],
)
def test_d2_different_persons(giver: str, receiver: str, same: bool) -> None:
    expected = [v("SAME_PERSON", "D2", "receiver.id_number")] if same else []
    assert check_different_persons(giver, receiver) == expected


# --- D3: suspended settlement ----------------------------------------------------------------------

SUSPENDED = MemberStatus("310", status_normal=True, settlement_suspended=True)


@pytest.mark.parametrize(
    ("giver", "receiver", "fields"),
    [
        (EMPLOYEE, RESIDENT, []),
        (SUSPENDED, RESIDENT, ["giver"]),
        (EMPLOYEE, SUSPENDED, ["receiver"]),
        (SUSPENDED, SUSPENDED, ["giver", "receiver"]),
        (EMPLOYEE, MemberStatus.not_found(), []),  # nothing known; D2 reports the missing member
    ],
)
def test_d3_settlement_suspended(giver: MemberStatus, receiver: MemberStatus, fields: list[str]) -> None:
    assert check_settlement(giver, receiver) == [v("SETTLEMENT_SUSPENDED", "D3", f) for f in fields]


# --- D4: relation codes ----------------------------------------------------------------------------

# Written out from domain.md D4 independently of the module's own tables.
ELIGIBLE_FAMILIES: dict[RelationKind, list[str]] = {
    RelationKind.SPOUSE: ["10", "11", "12"],
    RelationKind.CHILD: [*map(str, range(20, 28)), *map(str, range(30, 38))],
    RelationKind.PARENT: ["50", "51", "52", "57", "58"],
    RelationKind.GRANDPARENT: ["60", "61", "62", "63", "64"],
    RelationKind.GRANDCHILD: ["40", "41", "42", "43", "44"],
    RelationKind.SIBLING: ["70", "71", "73", "75", "77"],
}
INELIGIBLE_FAMILIES: dict[str, list[str]] = {
    "in-laws": ["28", "38", "53", "54", "55", "56", "72", "74", "76", "78", "45", "46"],
    "great-grandparents and great-grandchildren": ["47", "48", "65", "66", "67", "68"],
    "others": [str(n) for n in range(80, 100)],
    "other codes": ["29", "39", "59", "69", "79"],
    # In GB/T 4761 but absent from domain.md's lists: known, never eligible (see eligibility.py).
    "outside domain.md's lists": ["49", "01", "02"],
}
ALL_ELIGIBLE = {code: kind for kind, codes in ELIGIBLE_FAMILIES.items() for code in codes}
ALL_INELIGIBLE = {code for codes in INELIGIBLE_FAMILIES.values() for code in codes}


@pytest.mark.parametrize("kind", list(RelationKind))
def test_d4_each_eligible_family(kind: RelationKind) -> None:
    for code in ELIGIBLE_FAMILIES[kind]:
        assert check_relation_code(code) == [], code
        assert relation_kind(code) is kind, code


@pytest.mark.parametrize("family", list(INELIGIBLE_FAMILIES))
def test_d4_each_ineligible_family(family: str) -> None:
    for code in INELIGIBLE_FAMILIES[family]:
        assert check_relation_code(code) == [v("INELIGIBLE_RELATION", "D4", "relation_code")], code
        assert relation_kind(code) is None, code


# Wrong shape (full-width and Arabic-Indic digits included), then two ASCII digits the standard lacks.
MALFORMED_CODES = ["", "1", "100", "1a", "a1", " 10", "10 ", "10\n", "\uff11\uff10", "\u0661\u0660", "-1"]
UNKNOWN_CODES = ["00", "03", "09", "13", "19"]


@pytest.mark.parametrize("code", MALFORMED_CODES + UNKNOWN_CODES)
def test_d4_malformed_or_unknown_codes(code: str) -> None:
    assert check_relation_code(code) == [v("INVALID_RELATION_CODE", "D4", "relation_code")]
    assert relation_kind(code) is None


@settings(max_examples=300)
@given(st.one_of(st.integers(0, 99).map(lambda n: f"{n:02d}"), st.text(max_size=3)))
def test_d4_relation_kind_is_defined_exactly_on_the_eligible_codes(code: str) -> None:
    assert relation_kind(code) == ALL_ELIGIBLE.get(code)
    reasons = [x.reason for x in check_relation_code(code)]
    if code in ALL_ELIGIBLE:
        assert reasons == []
    elif code in ALL_INELIGIBLE:
        assert reasons == ["INELIGIBLE_RELATION"]
    else:
        assert reasons == ["INVALID_RELATION_CODE"]


def test_d4_every_two_digit_code_is_classified_once() -> None:
    assert not set(ALL_ELIGIBLE) & ALL_INELIGIBLE
    unknown = {f"{n:02d}" for n in range(100)} - set(ALL_ELIGIBLE) - ALL_INELIGIBLE
    assert unknown == {"00", *(f"{n:02d}" for n in range(3, 10)), *map(str, range(13, 20))}


# --- D5: consistency with the ID numbers -----------------------------------------------------------

# The gendered codes exactly as domain.md D5 lists them; every other eligible code carries no sex.
MALE_CODES = {"11", *map(str, range(20, 28)), "51", "57", "61", "63", "71", "73"}
FEMALE_CODES = {"12", *map(str, range(30, 38)), "52", "58", "62", "64", "75", "77"}


def test_d5_sex_table_matches_domain_md() -> None:
    for code in ALL_ELIGIBLE:
        expected = Sex.MALE if code in MALE_CODES else Sex.FEMALE if code in FEMALE_CODES else None
        assert relation_sex(code) is expected, code
    assert {c for c in ALL_ELIGIBLE if relation_sex(c) is None} == {"10", "50", "60", "70", *map(str, range(40, 45))}


INCONSISTENT = [v("RELATION_INCONSISTENT", "D5", "relation_code")]


@pytest.mark.parametrize(
    ("code", "giver", "receiver", "consistent"),
    [
        # children: younger, 2x male / 3x female
        ("20", GIVER_MAN_1990, BOY_2012, True),
        ("20", GIVER_MAN_1990, GIRL_2010, False),  # a son code with a female ID
        ("27", GIVER_MAN_1990, GIRL_2010, False),
        ("30", GIVER_MAN_1990, GIRL_2010, True),
        ("37", GIVER_MAN_1990, BOY_2012, False),  # a daughter code with a male ID
        ("21", GIVER_MAN_1990, MAN_1960, False),  # a son older than the giver
        ("22", GIVER_MAN_1990, make_id(date(1990, 1, 1), Sex.MALE), False),  # born the same day
        ("22", GIVER_MAN_1990, make_id(date(1990, 1, 2), Sex.MALE), True),  # a day younger
        # parents: older, 51/57 male, 52/58 female, 50 either
        ("52", GIVER_MAN_1990, MOTHER_1965, True),
        ("58", GIVER_MAN_1990, MOTHER_1965, True),
        ("51", GIVER_MAN_1990, MOTHER_1965, False),
        ("57", GIVER_MAN_1990, MAN_1960, True),
        ("52", GIVER_MAN_1990, GIRL_2010, False),  # a parent younger than the giver
        ("50", GIVER_MAN_1990, MAN_1960, True),
        ("50", GIVER_MAN_1990, MOTHER_1965, True),
        ("50", GIVER_MAN_1990, BOY_2012, False),
        ("50", GIVER_MAN_1990, SAME_BIRTHDAY_AS_GIVER, False),  # strictly older
        ("50", GIVER_MAN_1990, make_id(date(1989, 12, 31), Sex.MALE), True),
        # grandparents: older; 61/63 male, 62/64 female, 60 either
        ("60", GIVER_MAN_1990, WOMAN_1940, True),
        ("62", GIVER_MAN_1990, WOMAN_1940, True),
        ("64", GIVER_MAN_1990, WOMAN_1940, True),
        ("61", GIVER_MAN_1990, WOMAN_1940, False),
        ("63", GIVER_MAN_1990, MAN_1960, True),
        ("62", MOTHER_1965, GIRL_2010, False),  # a grandparent younger than the giver
        # grandchildren: younger; 40–44 carry no sex in domain.md
        ("40", MAN_1960, GIRL_2010, True),
        ("41", MAN_1960, GIRL_2010, True),  # GB/T 4761 says grandson; D5 does not check it
        ("44", MAN_1960, BOY_2012, True),
        ("43", MOTHER_1965, MAN_1960, False),  # a grandchild older than the giver
        # spouses: 11 husband male, 12 wife female, 10 either; no age rule
        ("10", GIVER_MAN_1990, WOMAN_1992, True),
        ("12", GIVER_MAN_1990, WOMAN_1992, True),
        ("11", GIVER_MAN_1990, WOMAN_1992, False),
        ("11", WOMAN_1992, GIVER_MAN_1990, True),
        ("12", WOMAN_1992, GIVER_MAN_1990, False),
        # siblings: 71/73 male, 75/77 female, 70 either; no age rule in D5
        ("70", GIVER_MAN_1990, WOMAN_1992, True),
        ("71", GIVER_MAN_1990, MAN_1985, True),
        ("73", GIVER_MAN_1990, MAN_1985, True),
        ("75", GIVER_MAN_1990, WOMAN_1992, True),
        ("77", GIVER_MAN_1990, MAN_1985, False),
        ("71", GIVER_MAN_1990, WOMAN_1992, False),
    ],
)
def test_d5_consistency(code: str, giver: str, receiver: str, consistent: bool) -> None:
    assert check_relation_consistency(code, idn(giver), idn(receiver)) == ([] if consistent else INCONSISTENT)


def test_d5_skips_what_an_invalid_id_hides() -> None:
    # Giver invalid: the age order cannot be checked, the receiver's sex still can.
    assert check_relation_consistency("52", None, idn(GIRL_2010)) == []
    assert check_relation_consistency("51", None, idn(MOTHER_1965)) == INCONSISTENT
    # Receiver invalid: neither age nor sex can be checked.
    assert check_relation_consistency("20", idn(GIVER_MAN_1990), None) == []
    # Ineligible codes are D4's business, not D5's.
    assert check_relation_consistency("28", idn(GIVER_MAN_1990), idn(MOTHER_1965)) == []
    assert check_relation_consistency("x", idn(GIVER_MAN_1990), idn(MOTHER_1965)) == []


# --- D6: attestation at acceptance -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "accepted_on", "requirement"),
    [
        # domain.md's vector, born 2010-03-01: 16 on 2026-03-01.
        (date(2010, 3, 1), date(2026, 2, 28), AttestationRequirement.GUARDIAN_ALLOWED),
        (date(2010, 3, 1), date(2026, 3, 1), AttestationRequirement.FACE_REQUIRED),
        (date(2010, 3, 1), date(2010, 3, 1), AttestationRequirement.GUARDIAN_ALLOWED),  # the day of birth
        # 29 February, 16th birthday in a leap year: the day itself.
        (date(2008, 2, 29), date(2024, 2, 28), AttestationRequirement.GUARDIAN_ALLOWED),
        (date(2008, 2, 29), date(2024, 2, 29), AttestationRequirement.FACE_REQUIRED),
        # 29 February, 16th birthday in a common year (2100): 1 March, not 28 February (D6).
        (date(2084, 2, 29), date(2100, 2, 28), AttestationRequirement.GUARDIAN_ALLOWED),
        (date(2084, 2, 29), date(2100, 3, 1), AttestationRequirement.FACE_REQUIRED),
        (date(1884, 2, 29), date(1900, 2, 28), AttestationRequirement.GUARDIAN_ALLOWED),
        (date(1884, 2, 29), date(1900, 3, 1), AttestationRequirement.FACE_REQUIRED),
        (date(1965, 5, 12), ON, AttestationRequirement.FACE_REQUIRED),
    ],
)
def test_d6_attestation_requirement(birth: date, accepted_on: date, requirement: AttestationRequirement) -> None:
    assert attestation_requirement(birth, accepted_on) is requirement


@pytest.mark.parametrize(
    ("method", "accepted_on", "violations"),
    [
        (AttestationMethod.GUARDIAN_DOCUMENT, date(2026, 2, 28), []),
        (AttestationMethod.FACE, date(2026, 2, 28), []),  # a child under 16 may verify their own face
        (AttestationMethod.FACE, date(2026, 3, 1), []),
        (AttestationMethod.GUARDIAN_DOCUMENT, date(2026, 3, 1), [v("FACE_REQUIRED", "D6", "attestation.method")]),
    ],
)
def test_d6_check_attestation(method: AttestationMethod, accepted_on: date, violations: list[Violation]) -> None:
    assert check_attestation(method, date(2010, 3, 1), accepted_on) == violations


def test_d6_acceptance_before_birth_is_an_error() -> None:
    with pytest.raises(ValueError):
        attestation_requirement(date(2010, 3, 1), date(2010, 2, 28))


def reference_age(birth: date, on: date) -> int:
    """Count the birthdays passed, a 29 February one falling on 1 March in common years."""
    years = 0
    while True:
        year = birth.year + years + 1
        try:
            anniversary = date(year, birth.month, birth.day)
        except ValueError:
            anniversary = date(year, 3, 1)
        if anniversary > on:
            return years
        years += 1


@settings(max_examples=300)
@given(
    st.dates(min_value=date(1880, 1, 1), max_value=date(2100, 12, 31)),
    st.integers(min_value=0, max_value=40 * 366),
    st.sampled_from(AttestationMethod),
)
def test_d6_agrees_with_a_plain_reference(birth: date, days: int, method: AttestationMethod) -> None:
    accepted_on = birth + timedelta(days=days)
    adult = reference_age(birth, accepted_on) >= 16
    expected = AttestationRequirement.FACE_REQUIRED if adult else AttestationRequirement.GUARDIAN_ALLOWED
    assert attestation_requirement(birth, accepted_on) is expected
    refused = adult and method is AttestationMethod.GUARDIAN_DOCUMENT
    assert [x.reason for x in check_attestation(method, birth, accepted_on)] == (["FACE_REQUIRED"] if refused else [])


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


@given(st.sampled_from([year for year in range(1804, 2200) if _is_leap(year)]))
def test_d6_leap_day_births_turn_16_on_their_anniversary_or_1_march(year: int) -> None:
    birth = date(year, 2, 29)
    sixteenth = date(birth.year + 16, 2, 29) if _is_leap(birth.year + 16) else date(birth.year + 16, 3, 1)
    assert attestation_requirement(birth, sixteenth - timedelta(days=1)) is AttestationRequirement.GUARDIAN_ALLOWED
    assert attestation_requirement(birth, sixteenth) is AttestationRequirement.FACE_REQUIRED


# --- check_eligibility: every rule, every failure --------------------------------------------------


def test_eligible_pair_has_no_violations() -> None:
    assert (
        check_eligibility(
            giver_id_number=GIVER_MAN_1990,
            receiver_id_number=MOTHER_1965,
            relation_code="52",
            giver_status=EMPLOYEE,
            receiver_status=RESIDENT,
            on=ON,
            attestation=AttestationMethod.FACE,
        )
        == []
    )


def test_reports_every_failed_rule_at_once() -> None:
    violations = check_eligibility(
        giver_id_number=GIVER_MAN_1990,
        receiver_id_number=corrupt(MOTHER_1965),
        relation_code="28",
        giver_status=MemberStatus("390", status_normal=False, settlement_suspended=True),
        receiver_status=MemberStatus.not_found(),
        on=ON,
    )
    assert violations == [
        v("INVALID_ID_NUMBER", "D1", "receiver.id_number"),
        v("GIVER_NOT_EMPLOYEE", "D2", "giver"),
        v("GIVER_NOT_INSURED", "D2", "giver"),
        v("RECEIVER_NOT_INSURED", "D2", "receiver"),
        v("SETTLEMENT_SUSPENDED", "D3", "giver"),
        v("INELIGIBLE_RELATION", "D4", "relation_code"),
    ]


def test_reports_inconsistency_alongside_insurance_and_attestation() -> None:
    # A "son" who is a woman born 1965, older than the giver, whose guardian signed: D2, D5 and D6 fail.
    violations = check_eligibility(
        giver_id_number=GIVER_MAN_1990,
        receiver_id_number=MOTHER_1965,
        relation_code="20",
        giver_status=EMPLOYEE,
        receiver_status=MemberStatus("390", status_normal=False, settlement_suspended=True),
        on=ON,
        attestation=AttestationMethod.GUARDIAN_DOCUMENT,
    )
    assert violations == [
        v("RECEIVER_NOT_INSURED", "D2", "receiver"),
        v("SETTLEMENT_SUSPENDED", "D3", "receiver"),
        v("RELATION_INCONSISTENT", "D5", "relation_code"),
        v("FACE_REQUIRED", "D6", "attestation.method"),
    ]


def test_same_person_and_malformed_code() -> None:
    violations = check_eligibility(
        giver_id_number=GIVER_MAN_1990,
        receiver_id_number=GIVER_MAN_1990,
        relation_code="2O",  # letter O
        giver_status=EMPLOYEE,
        receiver_status=EMPLOYEE,
        on=ON,
    )
    assert violations == [
        v("SAME_PERSON", "D2", "receiver.id_number"),
        v("INVALID_RELATION_CODE", "D4", "relation_code"),
    ]


def test_invalid_giver_id_still_checks_the_receiver_sex() -> None:
    violations = check_eligibility(
        giver_id_number=corrupt(GIVER_MAN_1990),
        receiver_id_number=GIRL_2010,
        relation_code="20",
        giver_status=EMPLOYEE,
        receiver_status=RESIDENT,
        on=date(2026, 2, 28),  # the day before she turns 16: her guardian may still attest
        attestation=AttestationMethod.GUARDIAN_DOCUMENT,
    )
    assert violations == [v("INVALID_ID_NUMBER", "D1", "giver.id_number"), INCONSISTENT[0]]


@pytest.mark.parametrize(("on", "reasons"), [(date(2024, 2, 28), []), (date(2024, 2, 29), ["FACE_REQUIRED"])])
def test_guardian_for_a_child_born_on_29_february(on: date, reasons: list[str]) -> None:
    child = make_id(date(2008, 2, 29), Sex.FEMALE, area="650502")
    violations = check_eligibility(
        giver_id_number=GIVER_MAN_1990,
        receiver_id_number=child,
        relation_code="31",
        giver_status=EMPLOYEE,
        receiver_status=RESIDENT,
        on=on,
        attestation=AttestationMethod.GUARDIAN_DOCUMENT,
    )
    assert [x.reason for x in violations] == reasons


STATUSES = st.builds(
    MemberStatus,
    insutype=st.sampled_from(["310", "390", "320", ""]),
    status_normal=st.booleans(),
    settlement_suspended=st.booleans(),
    found=st.booleans(),
)
ID_NUMBERS = st.sampled_from(
    [
        GIVER_MAN_1990,
        MOTHER_1965,
        GIRL_2010,
        MAN_1985,
        BOY_2012,
        WOMAN_1940,
        corrupt(GIVER_MAN_1990),
        "11010519491231002x",
        "",
    ]
)


@settings(max_examples=300)
@given(
    giver_id=ID_NUMBERS,
    receiver_id=ID_NUMBERS,
    code=st.one_of(st.integers(0, 99).map(lambda n: f"{n:02d}"), st.text(max_size=2)),
    giver=STATUSES,
    receiver=STATUSES,
    attestation=st.one_of(st.none(), st.sampled_from(AttestationMethod)),
)
def test_check_eligibility_is_every_rule_together(
    giver_id: str,
    receiver_id: str,
    code: str,
    giver: MemberStatus,
    receiver: MemberStatus,
    attestation: AttestationMethod | None,
) -> None:
    violations = check_eligibility(
        giver_id_number=giver_id,
        receiver_id_number=receiver_id,
        relation_code=code,
        giver_status=giver,
        receiver_status=receiver,
        on=ON,
        attestation=attestation,
    )
    giver_parsed, receiver_parsed = parse_valid_id(giver_id, ON), parse_valid_id(receiver_id, ON)
    expected = set(check_id_numbers(giver_id, receiver_id, ON))
    expected |= set(check_giver_insurance(giver)) | set(check_receiver_insurance(receiver))
    expected |= set(check_different_persons(giver_id, receiver_id)) | set(check_settlement(giver, receiver))
    expected |= set(check_relation_code(code))
    expected |= set(check_relation_consistency(code, giver_parsed, receiver_parsed))
    if attestation is not None and receiver_parsed is not None:
        expected |= set(check_attestation(attestation, receiver_parsed.birth_date, ON))
    assert set(violations) == expected
    assert len(violations) == len(expected)  # no rule reports the same failure twice
    # Independent of the rule functions: a gendered code never passes with the other sex.
    expected_sex = relation_sex(code)
    if receiver_parsed is not None and expected_sex is not None and receiver_parsed.sex is not expected_sex:
        assert v("RELATION_INCONSISTENT", "D5", "relation_code") in violations
    assert (not violations) == (
        giver_parsed is not None
        and receiver_parsed is not None
        and relation_kind(code) is not None
        and giver.found
        and giver.insutype == "310"
        and giver.status_normal
        and not giver.settlement_suspended
        and receiver.found
        and receiver.insutype in {"310", "390"}
        and receiver.status_normal
        and not receiver.settlement_suspended
        and giver_parsed != receiver_parsed
        and not check_relation_consistency(code, giver_parsed, receiver_parsed)
        and (attestation is None or not check_attestation(attestation, receiver_parsed.birth_date, ON))
    )


# -- what the giver's province is told ---------------------------------------------------------------

RECEIVER_NOT_ELIGIBLE = v("RECEIVER_NOT_ELIGIBLE", "D2-D3", "receiver")
RECEIVER_PROVINCE_SAYS = [  # every way the receiver's province can make the receiver ineligible
    MemberStatus.not_found(),
    MemberStatus("320", status_normal=True, settlement_suspended=False),
    MemberStatus("390", status_normal=False, settlement_suspended=False),
    MemberStatus("310", status_normal=True, settlement_suspended=True),
    MemberStatus("390", status_normal=False, settlement_suspended=True),
]


def _told(receiver: MemberStatus, giver: MemberStatus = EMPLOYEE, code: str = "52",
          receiver_id: str = MOTHER_1965) -> list[Violation]:
    return as_told_to_giver_province(check_eligibility(
        giver_id_number=GIVER_MAN_1990, receiver_id_number=receiver_id, relation_code=code, giver_status=giver,
        receiver_status=receiver, on=ON))


@pytest.mark.parametrize("receiver", RECEIVER_PROVINCE_SAYS,
                         ids=["not found", "other insutype", "not normal", "suspended", "not normal and suspended"])
def test_the_receivers_provinces_facts_are_one_reason_to_the_giver_province(receiver: MemberStatus) -> None:
    assert _told(receiver) == [RECEIVER_NOT_ELIGIBLE]
    # Beside rules the giver's province can check itself, which stay as they are, in front of it.
    assert _told(receiver, code="51") == [v("RELATION_INCONSISTENT", "D5", "relation_code"), RECEIVER_NOT_ELIGIBLE]


def test_the_collapsed_reason_has_one_place_whatever_it_stands_for() -> None:
    # The giver's own suspension sits between D2 and D3 in rule order: the receiver's reason does not move.
    suspended_giver = MemberStatus("310", status_normal=True, settlement_suspended=True)
    told = {_told(r, suspended_giver, code="28") == [v("SETTLEMENT_SUSPENDED", "D3", "giver"),
                                                     v("INELIGIBLE_RELATION", "D4", "relation_code"),
                                                     RECEIVER_NOT_ELIGIBLE]
            for r in RECEIVER_PROVINCE_SAYS}
    assert told == {True}


def test_the_giver_provinces_own_checks_stay_specific() -> None:
    giver = MemberStatus("390", status_normal=False, settlement_suspended=True)
    assert _told(RESIDENT, giver, code="28", receiver_id=corrupt(MOTHER_1965)) == [
        v("INVALID_ID_NUMBER", "D1", "receiver.id_number"),
        v("GIVER_NOT_EMPLOYEE", "D2", "giver"),
        v("GIVER_NOT_INSURED", "D2", "giver"),
        v("SETTLEMENT_SUSPENDED", "D3", "giver"),
        v("INELIGIBLE_RELATION", "D4", "relation_code"),
    ]
    assert _told(RESIDENT) == []


@settings(max_examples=300)
@given(giver_id=ID_NUMBERS, receiver_id=ID_NUMBERS, code=st.integers(0, 99).map(lambda n: f"{n:02d}"),
       giver=STATUSES, receiver=STATUSES)
def test_what_the_giver_province_hears_does_not_depend_on_which_receiver_fact_failed(
        giver_id: str, receiver_id: str, code: str, giver: MemberStatus, receiver: MemberStatus) -> None:
    def told(status: MemberStatus) -> list[Violation]:
        return as_told_to_giver_province(check_eligibility(
            giver_id_number=giver_id, receiver_id_number=receiver_id, relation_code=code, giver_status=giver,
            receiver_status=status, on=ON))

    heard = told(receiver)
    fine = told(RESIDENT)
    assert RECEIVER_NOT_ELIGIBLE not in fine
    # Everything else is exactly what a fine receiver would give; the receiver's facts add one reason at most.
    assert heard in (fine, [*fine, RECEIVER_NOT_ELIGIBLE])
    assert {x.reason for x in heard} & {"RECEIVER_NOT_INSURED"} == set()
    assert v("SETTLEMENT_SUSPENDED", "D3", "receiver") not in heard
