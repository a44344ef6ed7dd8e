"""Family-relation messages as the domain sees them (the rules themselves are in eligibility.py)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime

from gateway.domain.envelope import Header
from gateway.domain.identity import mask_id_number, normalise_id_number
from gateway.domain.transfers import PersonRef

# ASCII only, as in identity.py: what has an ID number's shape is masked; anything else is not kept at all.
_ID_NUMBER_SHAPE = re.compile(r"[0-9]{17}[0-9Xx]")
_RELATION_CODE_SHAPE = re.compile(r"[0-9]{2}")


@dataclass(frozen=True, slots=True)
class RelationQuery:
    """May `receiver` (insured in header.receiver's province) receive from `giver` under this relation?"""

    header: Header
    giver: PersonRef
    receiver: PersonRef
    relation_code: str


class RelationAnswer(enum.Enum):
    ELIGIBLE = "ELIGIBLE"
    NOT_ELIGIBLE = "NOT_ELIGIBLE"


@dataclass(frozen=True, slots=True)
class RelationQueryRecord:
    """Who asked about whom, when, and what they were told: masked ID numbers only, never a birth date (D19)."""

    asked_at: datetime
    asking_province: str
    receiver_province: str
    message_id: str
    giver_id_masked: str
    receiver_id_masked: str
    relation_code: str
    answer: RelationAnswer


def masked_for_record(id_number: str) -> str:
    """First 6 + last 4 of a value shaped like an ID number (D19); "" for anything else, which a province may
    have filled with any text (a name, say) that must not reach a permanent record."""
    if _ID_NUMBER_SHAPE.fullmatch(id_number) is None:
        return ""
    return mask_id_number(normalise_id_number(id_number))


def record_of(query: RelationQuery, answer: RelationAnswer, at: datetime) -> RelationQueryRecord:
    header = query.header
    code = query.relation_code if _RELATION_CODE_SHAPE.fullmatch(query.relation_code) else ""
    return RelationQueryRecord(asked_at=at, asking_province=header.sender, receiver_province=header.receiver,
                               message_id=header.message_id, giver_id_masked=masked_for_record(query.giver.id_number),
                               receiver_id_masked=masked_for_record(query.receiver.id_number), relation_code=code,
                               answer=answer)
