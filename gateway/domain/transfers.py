"""Transfers: the instruction, its validation (D1, D2, D11), states and deadlines (D13)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from gateway.domain import reasons
from gateway.domain.clock import BEIJING
from gateway.domain.envelope import MESSAGE_ID_PATTERN, Header
from gateway.domain.errors import InvalidArgument
from gateway.domain.identity import check_id_number, normalise_id_number
from gateway.domain.money import validate_amount
from gateway.domain.provinces import PROVINCE_CODE

CURRENCY = "CNY"
REASON_PATTERN = re.compile(r"[A-Z0-9_]{0,64}")
INT64_MAX = 2**63 - 1


class TransferState(enum.Enum):
    RECEIVED = "RECEIVED"
    DELIVERED = "DELIVERED"
    COMMITTED = "COMMITTED"
    DECLINED = "DECLINED"
    RETURNED = "RETURNED"
    REJECTED = "REJECTED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {TransferState.COMMITTED, TransferState.DECLINED, TransferState.RETURNED, TransferState.REJECTED}
)


class Decision(enum.Enum):
    CREDITED = "CREDITED"
    DECLINED = "DECLINED"


@dataclass(frozen=True, slots=True)
class PersonRef:
    id_number: str
    pooling_area: str


@dataclass(frozen=True, slots=True)
class TransferInstruction:
    header: Header
    giver: PersonRef
    receiver: PersonRef
    amount_fen: int
    currency: str
    expires_at: datetime | None
    binding_id: str


@dataclass(frozen=True, slots=True)
class TransferConfirmation:
    header: Header
    transfer_id: str
    decision: Decision
    decline_reason: str


@dataclass(frozen=True, slots=True)
class TransferQuery:
    header: Header
    transfer_id: str


@dataclass(frozen=True, slots=True)
class TransferEvent:
    state: TransferState
    at: datetime
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Transfer:
    transfer_id: str
    state: TransferState
    giver_province: str
    receiver_province: str
    giver_id_masked: str
    receiver_id_masked: str
    amount_fen: int
    currency: str
    created_at: datetime
    updated_at: datetime
    return_deadline: datetime
    delivery_deadline: datetime
    instruction_sha256: bytes
    reason: str = ""
    binding_id: str = ""
    settlement_window_id: str = ""
    history: tuple[TransferEvent, ...] = ()


def validate_message_id(message_id: str, field: str = "header.message_id") -> None:
    if not MESSAGE_ID_PATTERN.fullmatch(message_id):
        raise InvalidArgument("message_id must be 1-64 characters from [A-Za-z0-9._:-]",
                              reason=reasons.INVALID_MESSAGE_ID, field=field)


def validate_pooling_area(area: str, province: str, field: str) -> None:
    """A pooling area is six ASCII digits within the province that insures the person."""
    if len(area) != 6 or not (area.isascii() and area.isdigit()) or area[:2] != province[:2]:
        raise InvalidArgument(f"{field} must be a 6-digit pooling area within province {province}",
                              reason=reasons.INVALID_POOLING_AREA, field=field)


def validate_person(person: PersonRef, province: str, role: str, today: date) -> None:
    problem = check_id_number(person.id_number, today)
    if problem is not None:
        raise InvalidArgument(f"{role}.id_number is not a valid resident ID number ({problem.value})",
                              reason=reasons.INVALID_ID_NUMBER, field=f"{role}.id_number")
    validate_pooling_area(person.pooling_area, province, f"{role}.pooling_area")


def validate_different_persons(giver: PersonRef, receiver: PersonRef) -> None:
    if normalise_id_number(giver.id_number) == normalise_id_number(receiver.id_number):
        raise InvalidArgument("the receiver must be a different person from the giver (D2)",
                              reason=reasons.SAME_PERSON, field="receiver.id_number")


def validate_instruction(instruction: TransferInstruction, today: date) -> None:
    """Every field of an instruction (the header's sender and freshness are checked with the envelope)."""
    header = instruction.header
    validate_message_id(header.message_id)
    if not PROVINCE_CODE.fullmatch(header.receiver):
        raise InvalidArgument("header.receiver must be the receiver's province code",
                              reason=reasons.INVALID_PROVINCE_CODE, field="header.receiver")
    if header.receiver == header.sender:
        raise InvalidArgument("giver and receiver are insured in the same province; the gateway carries "
                              "cross-province transfers only",
                              reason=reasons.NOT_CROSS_PROVINCE, field="header.receiver")
    validate_person(instruction.giver, header.sender, "giver", today)
    validate_person(instruction.receiver, header.receiver, "receiver", today)
    validate_different_persons(instruction.giver, instruction.receiver)
    validate_amount(instruction.amount_fen, "amount_fen")
    if instruction.currency != CURRENCY:
        raise InvalidArgument("currency must be CNY (D11)", reason=reasons.UNSUPPORTED_CURRENCY, field="currency")
    if instruction.expires_at is not None and instruction.expires_at <= header.created_at:
        raise InvalidArgument("expires_at must be after header.created_at", reason=reasons.INVALID_EXPIRY,
                              field="expires_at")
    if not instruction.binding_id:
        raise InvalidArgument("binding_id is required: a transfer needs the giver's ACTIVE binding (D10)",
                              reason=reasons.MISSING_FIELD, field="binding_id")
    validate_message_id(instruction.binding_id, field="binding_id")


def validate_confirmation(confirmation: TransferConfirmation) -> None:
    validate_message_id(confirmation.header.message_id)
    validate_message_id(confirmation.transfer_id, field="transfer_id")
    if not REASON_PATTERN.fullmatch(confirmation.decline_reason):
        raise InvalidArgument("decline_reason is UPPER_SNAKE_CASE, at most 64 characters",
                              reason=reasons.INVALID_REASON, field="decline_reason")


def return_deadline(received_at: datetime, expires_at: datetime | None, return_hour: int) -> datetime:
    """D13: `return_hour` Beijing time on the day after receipt, or the instruction's expiry if earlier."""
    beijing_day = received_at.astimezone(BEIJING).date()
    policy_deadline = datetime.combine(beijing_day + timedelta(days=1), time(return_hour), tzinfo=BEIJING)
    if expires_at is not None and expires_at < policy_deadline:
        return expires_at
    return policy_deadline


def delivery_deadline(received_at: datetime, seconds: int, returns_at: datetime) -> datetime:
    """Undelivered by then: REJECTED, DESTINATION_UNREACHABLE. Never later than the return deadline."""
    return min(received_at + timedelta(seconds=seconds), returns_at)
