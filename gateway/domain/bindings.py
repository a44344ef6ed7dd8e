"""Bindings between a giver and a receiver (D6-D9): messages, the entity, states and validation."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.domain import reasons
from gateway.domain.clock import BEIJING
from gateway.domain.eligibility import AttestationMethod
from gateway.domain.envelope import Header
from gateway.domain.errors import InvalidArgument
from gateway.domain.money import validate_amount
from gateway.domain.provinces import PROVINCE_CODE
from gateway.domain.references import validate_reference
from gateway.domain.transfers import (
    REASON_PATTERN,
    PersonRef,
    validate_different_persons,
    validate_message_id,
    validate_person,
)

# How long a proposal may wait for the receiver's consent; it holds both people for that long where a
# province allows one relation at a time (D8), so it is short.
MAX_CONSENT_WINDOW = timedelta(hours=72)
LETTER_VERSION_MAX = 32
EVIDENCE_REF_MAX = 128


class BindingState(enum.Enum):
    PROPOSED = "PROPOSED"
    ACTIVE = "ACTIVE"
    REFUSED = "REFUSED"
    EXPIRED = "EXPIRED"
    DISSOLVED = "DISSOLVED"
    SUSPENDED = "SUSPENDED"


# A person is "in a relation" (D8, single_relation_only) while a binding is one of these (a proposal only
# until its consent deadline: see holds_people).
LIVE_STATES = (BindingState.PROPOSED, BindingState.ACTIVE, BindingState.SUSPENDED)


class ConsentDecision(enum.Enum):
    ACCEPT = "ACCEPT"
    REFUSE = "REFUSE"


class MemberChangeKind(enum.Enum):
    INSURANCE_ENDED = "INSURANCE_ENDED"
    POOLING_AREA_MOVED = "POOLING_AREA_MOVED"
    SETTLEMENT_SUSPENDED = "SETTLEMENT_SUSPENDED"
    SETTLEMENT_RESUMED = "SETTLEMENT_RESUMED"


@dataclass(frozen=True, slots=True)
class Attestation:
    method: AttestationMethod
    evidence_ref: str
    attested_at: datetime


@dataclass(frozen=True, slots=True)
class BindingProposal:
    header: Header  # message_id is the binding_id
    giver: PersonRef
    receiver: PersonRef
    relation_code: str
    letter_version: str
    accepted_at: datetime | None
    authorised_amount_fen: int
    consent_by: datetime | None


@dataclass(frozen=True, slots=True)
class BindingAcceptance:
    header: Header
    binding_id: str
    decision: ConsentDecision
    attestation: Attestation | None


@dataclass(frozen=True, slots=True)
class BindingDissolution:
    header: Header
    binding_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class BindingQuery:
    header: Header
    binding_id: str


@dataclass(frozen=True, slots=True)
class MemberChange:
    header: Header
    person: PersonRef
    kind: MemberChangeKind
    effective_at: datetime | None


@dataclass(frozen=True, slots=True)
class Binding:
    binding_id: str
    state: BindingState
    giver_province: str
    receiver_province: str
    giver_id_masked: str
    receiver_id_masked: str
    relation_code: str
    authorised_amount_fen: int  # 0: none
    consent_by: datetime
    created_at: datetime
    updated_at: datetime
    proposal_sha256: bytes
    reason: str = ""
    attestation_method: AttestationMethod | None = None
    evidence_ref: str = ""
    attested_at: datetime | None = None
    used_amount_fen: int = 0
    # Keyed hashes of the two ID numbers (D19): how the gateway recognises the same person again.
    giver_ref: bytes = b""
    receiver_ref: bytes = b""

    def has_party(self, province: str) -> bool:
        return province in (self.giver_province, self.receiver_province)

    def holds_people(self, now: datetime) -> bool:
        """Whether its two people are in this relation now (D8): live, and a proposal only until consent_by."""
        return self.state in LIVE_STATES and not (self.state is BindingState.PROPOSED and self.consent_by <= now)


def validate_proposal(proposal: BindingProposal, now: datetime) -> None:
    """The proposal's own fields, the ID numbers (D1) and two people (D2) included, as for a transfer; the rest of
    eligibility (D2-D5, with what the provinces say) is judged separately and refused as a precondition."""
    header = proposal.header
    validate_message_id(header.message_id)
    if not PROVINCE_CODE.fullmatch(header.receiver):
        raise InvalidArgument("header.receiver must be the receiver's province code",
                              reason=reasons.INVALID_PROVINCE_CODE,
                              field="header.receiver")
    if header.receiver == header.sender:
        raise InvalidArgument("giver and receiver are insured in the same province; the gateway carries "
                              "cross-province relations only",
                              reason=reasons.NOT_CROSS_PROVINCE, field="header.receiver")
    today = now.astimezone(BEIJING).date()
    validate_person(proposal.giver, header.sender, "giver", today)
    validate_person(proposal.receiver, header.receiver, "receiver", today)
    validate_different_persons(proposal.giver, proposal.receiver)
    if not proposal.letter_version:
        raise InvalidArgument("the giver's accepted commitment letter is required", reason=reasons.MISSING_COMMITMENT,
                              field="commitment.letter_version")
    validate_reference(proposal.letter_version, "commitment.letter_version", max_length=LETTER_VERSION_MAX)
    if proposal.accepted_at is None or proposal.accepted_at > now + timedelta(minutes=5):
        raise InvalidArgument("commitment.accepted_at is required and not in the future",
                              reason=reasons.INVALID_TIMESTAMP,
                              field="commitment.accepted_at")
    validate_amount(proposal.authorised_amount_fen, "authorised_amount_fen", zero_allowed=True)  # 0: none
    if proposal.consent_by is None or not now < proposal.consent_by <= now + MAX_CONSENT_WINDOW:
        raise InvalidArgument("consent_by must be in the future, within 72 hours",
                              reason=reasons.INVALID_CONSENT_DEADLINE,
                              field="consent_by")


def validate_attestation(attestation: Attestation) -> None:
    """The province's evidence reference names its own record of the attestation (D7): an identifier,
    never the person's name or ID number, which would stay in the permanent record."""
    validate_reference(attestation.evidence_ref, "attestation.evidence_ref", max_length=EVIDENCE_REF_MAX)


def validate_reason(reason: str, field: str = "reason") -> None:
    if not REASON_PATTERN.fullmatch(reason):
        raise InvalidArgument("reason is UPPER_SNAKE_CASE, at most 64 characters",
                              reason=reasons.INVALID_REASON, field=field)
