"""Family-relation messages as the domain sees them (the rules themselves are in eligibility.py)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.domain.envelope import Header
from gateway.domain.transfers import PersonRef


@dataclass(frozen=True, slots=True)
class RelationQuery:
    """May `receiver` (insured in header.receiver's province) receive from `giver` under this relation?"""

    header: Header
    giver: PersonRef
    receiver: PersonRef
    relation_code: str
