"""Eligibility of a giver/receiver pair and relation code (domain D1–D6), each rule a pure function."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from gateway.domain import reasons
from gateway.domain.identity import IdNumber, Sex, age_on, check_id_number, normalise_id_number

EMPLOYEE_INSUTYPE = "310"
RESIDENT_INSUTYPE = "390"
RECEIVER_INSUTYPES: frozenset[str] = frozenset({EMPLOYEE_INSUTYPE, RESIDENT_INSUTYPE})

# D6: from this age (full years on the event date) the receiver must verify their own face.
FACE_REQUIRED_FROM_AGE = 16

# Field names as the wire messages spell them; "" would mean "no field" to the error table.
GIVER_ID_FIELD = "giver.id_number"
RECEIVER_ID_FIELD = "receiver.id_number"
GIVER_FIELD = "giver"
RECEIVER_FIELD = "receiver"
RELATION_CODE_FIELD = "relation_code"
ATTESTATION_METHOD_FIELD = "attestation.method"

# ASCII only: \d would let full-width and other Unicode digits through, as in identity.py.
_TWO_ASCII_DIGITS = re.compile(r"[0-9]{2}")


@dataclass(frozen=True, slots=True)
class Violation:
    """One failed rule: a stable UPPER_SNAKE_CASE reason, the rule it cites (D1…), the offending field."""

    reason: str
    rule: str
    field: str


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """What a person's province reports via CheckMember; `found` False means not insured there at all."""

    insutype: str
    status_normal: bool
    settlement_suspended: bool
    found: bool = True

    @classmethod
    def not_found(cls) -> MemberStatus:
        return cls(insutype="", status_normal=False, settlement_suspended=False, found=False)


class RelationKind(enum.Enum):
    """The eligible families of D4: the receiver's relation to the giver."""

    SPOUSE = "SPOUSE"
    CHILD = "CHILD"
    PARENT = "PARENT"
    GRANDPARENT = "GRANDPARENT"
    GRANDCHILD = "GRANDCHILD"
    SIBLING = "SIBLING"


class AttestationMethod(enum.Enum):
    FACE = "FACE"
    GUARDIAN_DOCUMENT = "GUARDIAN_DOCUMENT"


class AttestationRequirement(enum.Enum):
    FACE_REQUIRED = "FACE_REQUIRED"
    GUARDIAN_ALLOWED = "GUARDIAN_ALLOWED"


def _codes(first: int, last: int) -> frozenset[str]:
    return frozenset(f"{n:02d}" for n in range(first, last + 1))


ELIGIBLE_RELATIONS: dict[str, RelationKind] = {
    **dict.fromkeys(("10", "11", "12"), RelationKind.SPOUSE),
    **dict.fromkeys(_codes(20, 27) | _codes(30, 37), RelationKind.CHILD),
    **dict.fromkeys(("50", "51", "52", "57", "58"), RelationKind.PARENT),
    **dict.fromkeys(_codes(60, 64), RelationKind.GRANDPARENT),
    **dict.fromkeys(_codes(40, 44), RelationKind.GRANDCHILD),
    **dict.fromkeys(("70", "71", "73", "75", "77"), RelationKind.SIBLING),
}

# Codes GB/T 4761 defines that D4 names as not eligible. 49 ("other grandchild") and 01/02 (self,
# head of household) are in the standard but missing from domain.md's lists; they are treated as
# known and ineligible, like their siblings 29/39/59/69/79, rather than as malformed codes.
INELIGIBLE_RELATIONS: frozenset[str] = (
    frozenset({"28", "38", "53", "54", "55", "56", "72", "74", "76", "78", "45", "46"})  # in-laws
    | frozenset({"47", "48", "65", "66", "67", "68"})  # great-grandchildren, great-grandparents
    | _codes(80, 99)  # other relatives and non-relatives
    | frozenset({"29", "39", "49", "59", "69", "79"})  # "other" son/daughter/…: not for automatic binding
    | frozenset({"01", "02"})  # self, head of household: not a relation to the giver
)

KNOWN_RELATION_CODES: frozenset[str] = frozenset(ELIGIBLE_RELATIONS) | INELIGIBLE_RELATIONS

# D5's gendered codes exactly as domain.md lists them. 10, 50, 60, 70 are the generic codes. GB/T 4761
# also genders 41/43 (grandsons) and 42/44 (granddaughters), but domain.md's D5 does not list them,
# so they are not checked against the receiver's sex (see the report to issue 3).
RELATION_SEX: dict[str, Sex] = {
    "11": Sex.MALE,
    "12": Sex.FEMALE,
    **dict.fromkeys(_codes(20, 27), Sex.MALE),
    **dict.fromkeys(_codes(30, 37), Sex.FEMALE),
    "51": Sex.MALE,
    "57": Sex.MALE,
    "52": Sex.FEMALE,
    "58": Sex.FEMALE,
    "61": Sex.MALE,
    "63": Sex.MALE,
    "62": Sex.FEMALE,
    "64": Sex.FEMALE,
    "71": Sex.MALE,
    "73": Sex.MALE,
    "75": Sex.FEMALE,
    "77": Sex.FEMALE,
}

# Younger/older than the giver. Siblings are not ordered: D5 does not ask that 71/75 (elder) be
# older or 73/77 (younger) be younger, although the GB/T 4761 names imply it.
_YOUNGER_KINDS = frozenset({RelationKind.CHILD, RelationKind.GRANDCHILD})
_OLDER_KINDS = frozenset({RelationKind.PARENT, RelationKind.GRANDPARENT})


def relation_kind(code: str) -> RelationKind | None:
    """The eligible family of `code` (D4), or None if the code is malformed, unknown or ineligible."""
    return ELIGIBLE_RELATIONS.get(code)


def relation_sex(code: str) -> Sex | None:
    """The sex a relation code implies for the receiver (D5), or None if it implies none."""
    return RELATION_SEX.get(code)


def parse_valid_id(raw: str, on: date) -> IdNumber | None:
    """The ID number if valid on `on` (D1), else None; lets later rules skip what they cannot check."""
    if check_id_number(raw, on) is not None:
        return None
    return IdNumber(normalise_id_number(raw))


# --- the rules ---------------------------------------------------------------------------------


def check_id_numbers(giver_id_number: str, receiver_id_number: str, on: date) -> list[Violation]:
    """D1: both ID numbers are valid resident ID numbers on the event date."""
    violations = []
    for raw, field in ((giver_id_number, GIVER_ID_FIELD), (receiver_id_number, RECEIVER_ID_FIELD)):
        # The specific IdNumberProblem stays out: callers only need the stable reason, and the
        # problem would hint at the content of a sensitive value (D19).
        if check_id_number(raw, on) is not None:
            violations.append(Violation(reasons.INVALID_ID_NUMBER, "D1", field))
    return violations


def check_giver_insurance(giver: MemberStatus) -> list[Violation]:
    """D2: the giver is insured in employee insurance (310) with normal status."""
    if not giver.found:
        return [Violation(reasons.GIVER_NOT_INSURED, "D2", GIVER_FIELD)]
    violations = []
    if giver.insutype != EMPLOYEE_INSUTYPE:
        violations.append(Violation(reasons.GIVER_NOT_EMPLOYEE, "D2", GIVER_FIELD))
    if not giver.status_normal:
        violations.append(Violation(reasons.GIVER_NOT_INSURED, "D2", GIVER_FIELD))
    return violations


def check_receiver_insurance(receiver: MemberStatus) -> list[Violation]:
    """D2: the receiver is insured in employee (310) or resident (390) insurance with normal status."""
    if receiver.found and receiver.insutype in RECEIVER_INSUTYPES and receiver.status_normal:
        return []
    return [Violation(reasons.RECEIVER_NOT_INSURED, "D2", RECEIVER_FIELD)]


def check_different_persons(giver_id_number: str, receiver_id_number: str) -> list[Violation]:
    """D2: the receiver is not the giver (x and X are the same check character)."""
    if normalise_id_number(giver_id_number) == normalise_id_number(receiver_id_number):
        return [Violation(reasons.SAME_PERSON, "D2", RECEIVER_ID_FIELD)]
    return []


def check_settlement(giver: MemberStatus, receiver: MemberStatus) -> list[Violation]:
    """D3: neither side's networked settlement is suspended."""
    return [
        Violation(reasons.SETTLEMENT_SUSPENDED, "D3", field)
        for status, field in ((giver, GIVER_FIELD), (receiver, RECEIVER_FIELD))
        if status.found and status.settlement_suspended
    ]


def check_relation_code(code: str) -> list[Violation]:
    """D4: the code is a GB/T 4761 relation code of an eligible family."""
    if _TWO_ASCII_DIGITS.fullmatch(code) is None or code not in KNOWN_RELATION_CODES:
        return [Violation(reasons.INVALID_RELATION_CODE, "D4", RELATION_CODE_FIELD)]
    if code not in ELIGIBLE_RELATIONS:
        return [Violation(reasons.INELIGIBLE_RELATION, "D4", RELATION_CODE_FIELD)]
    return []


def check_relation_consistency(code: str, giver: IdNumber | None, receiver: IdNumber | None) -> list[Violation]:
    """D5: the relation agrees with the birth dates and the receiver's sex in the two ID numbers.

    None stands for an ID number that failed D1: the parts that need it are skipped, not failed.
    Codes that are not eligible are skipped too, since D4 already refuses them.
    """
    kind = relation_kind(code)
    if kind is None:
        return []
    consistent = True
    if giver is not None and receiver is not None:
        # Strict in both directions: a "parent" born the same day as the giver is not plausible.
        if kind in _YOUNGER_KINDS and not receiver.birth_date > giver.birth_date:
            consistent = False
        if kind in _OLDER_KINDS and not receiver.birth_date < giver.birth_date:
            consistent = False
    expected_sex = relation_sex(code)
    if receiver is not None and expected_sex is not None and receiver.sex is not expected_sex:
        consistent = False
    # One reason per rule: the field is the same and the detail would describe the people (D19).
    return [] if consistent else [Violation(reasons.RELATION_INCONSISTENT, "D5", RELATION_CODE_FIELD)]


def attestation_requirement(receiver_birth: date, accepted_on: date) -> AttestationRequirement:
    """D6: face verification from the 16th birthday on (full years, Beijing date); guardian before.

    Raises ValueError if `accepted_on` is before `receiver_birth`.
    """
    if age_on(receiver_birth, accepted_on) >= FACE_REQUIRED_FROM_AGE:
        return AttestationRequirement.FACE_REQUIRED
    return AttestationRequirement.GUARDIAN_ALLOWED


def check_attestation(method: AttestationMethod, receiver_birth: date, accepted_on: date) -> list[Violation]:
    """D6: a guardian's document is refused for a receiver aged 16 or over; FACE is always acceptable."""
    requirement = attestation_requirement(receiver_birth, accepted_on)
    if method is AttestationMethod.GUARDIAN_DOCUMENT and requirement is AttestationRequirement.FACE_REQUIRED:
        return [Violation(reasons.FACE_REQUIRED, "D6", ATTESTATION_METHOD_FIELD)]
    return []


# D2's insurance and D3's suspension of the receiver are what only the receiver's province knows (CheckMember).
_RECEIVER_PROVINCE_FACTS = frozenset({(reasons.RECEIVER_NOT_INSURED, RECEIVER_FIELD),
                                      (reasons.SETTLEMENT_SUSPENDED, RECEIVER_FIELD)})
RECEIVER_NOT_ELIGIBLE = Violation(reasons.RECEIVER_NOT_ELIGIBLE, "D2-D3", RECEIVER_FIELD)


def as_told_to_giver_province(violations: Sequence[Violation]) -> list[Violation]:
    """The violations the giver's province may hear (D19): its own checks as they are, the receiver's province's
    facts about the receiver (not insured there, not in a receiver's insurance, suspended) as one
    RECEIVER_NOT_ELIGIBLE.

    Told apart, they would let any province learn, for any ID number, whether that person is insured in
    another province and whether their settlement is suspended (a fraud flag). The collapsed reason comes
    last, whichever facts it stands for, so its place in the list says nothing either.
    """
    told = [v for v in violations if (v.reason, v.field) not in _RECEIVER_PROVINCE_FACTS]
    if len(told) < len(violations):
        told.append(RECEIVER_NOT_ELIGIBLE)
    return told


def check_eligibility(
    *,
    giver_id_number: str,
    receiver_id_number: str,
    relation_code: str,
    giver_status: MemberStatus,
    receiver_status: MemberStatus,
    on: date,
    attestation: AttestationMethod | None = None,
) -> list[Violation]:
    """Run every rule D1–D6 and report every failure, in rule order (empty list: eligible).

    `on` is the event date in Beijing (policy.beijing_day). `attestation` is given at acceptance
    only; D6 is then checked if the receiver's ID number is valid.
    """
    giver = parse_valid_id(giver_id_number, on)
    receiver = parse_valid_id(receiver_id_number, on)
    violations = [
        *check_id_numbers(giver_id_number, receiver_id_number, on),
        *check_giver_insurance(giver_status),
        *check_receiver_insurance(receiver_status),
        *check_different_persons(giver_id_number, receiver_id_number),
        *check_settlement(giver_status, receiver_status),
        *check_relation_code(relation_code),
        *check_relation_consistency(relation_code, giver, receiver),
    ]
    # A valid ID number's birth date is not after `on` (D1), so age_on cannot raise here.
    if attestation is not None and receiver is not None:
        violations += check_attestation(attestation, receiver.birth_date, on)
    return violations
