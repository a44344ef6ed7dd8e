"""The 2026 quota regime (Q1-Q13): a binding's quota, its consumptions and reversals, and the rules on them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import date, datetime

from gateway.domain import reasons
from gateway.domain.clock import BEIJING
from gateway.domain.envelope import Header
from gateway.domain.errors import FailedPrecondition
from gateway.domain.money import validate_amount
from gateway.domain.references import validate_reference
from gateway.domain.settlement import CLEARING_PREFIX, SettlementPeriod, WindowSpan, window_containing
from gateway.domain.transfers import PersonRef, validate_message_id, validate_person, validate_pooling_area

SETTLEMENT_REF_MAX = 64
FREEZE_REF_MAX = 64


class ConsumptionKind(enum.Enum):
    """What a quota may pay for (Q4): care, medicine, and premiums paid for the receiver. Nothing else, no cash."""

    MEDICAL = "MEDICAL"
    PHARMACY = "PHARMACY"
    RESIDENT_PREMIUM = "RESIDENT_PREMIUM"
    LTC_PREMIUM = "LTC_PREMIUM"


class QuotaChange(enum.Enum):
    """Why a quota's figures moved; each change is one notice to the provinces (Q6, Q8)."""

    GRANTED = "GRANTED"  # set or raised by the giver's province
    LOWERED = "LOWERED"  # lowered by the giver's province: the unused part released
    CONSUMED = "CONSUMED"
    REVERSED = "REVERSED"  # back to the quota (binding ACTIVE) or released (binding ended)
    RELEASED = "RELEASED"  # the binding ended: its unused quota back to the giver


@dataclass(frozen=True, slots=True)
class QuotaBalance:
    """A binding's quota in whole fen (Q3). `available` is never stored: it is what the equation leaves.

    granted: every fen the giver's province has frozen for it; consumed: drawn and not reversed; released:
    gone back to the giver (lowered, or the binding ended). available = granted - consumed - released.
    """

    granted_fen: int = 0
    consumed_fen: int = 0
    released_fen: int = 0

    @property
    def available_fen(self) -> int:
        return self.granted_fen - self.consumed_fen - self.released_fen

    @property
    def quota_fen(self) -> int:
        """The quota as it stands: what has been granted and not released (consumed + available)."""
        return self.granted_fen - self.released_fen

    @property
    def conserved(self) -> bool:
        """Q3: every figure is >= 0 and the equation leaves a non-negative available amount."""
        return min(self.granted_fen, self.consumed_fen, self.released_fen, self.available_fen) >= 0


def set_quota(balance: QuotaBalance, quota_fen: int) -> tuple[QuotaBalance, QuotaChange, int]:
    """Q2: the giver's province sets the quota to `quota_fen`; returns the new balance, the change and its size.

    Raising it grants the difference (the province froze that much first); lowering it releases unused quota
    only, never below what is already consumed (QUOTA_BELOW_CONSUMED).
    """
    difference = quota_fen - balance.quota_fen
    if difference >= 0:
        return replace(balance, granted_fen=balance.granted_fen + difference), QuotaChange.GRANTED, difference
    if -difference > balance.available_fen:
        raise FailedPrecondition("a quota can be lowered by its unused part only, never below what is consumed (Q2)",
                                 reason=reasons.QUOTA_BELOW_CONSUMED, field="quota_fen")
    return replace(balance, released_fen=balance.released_fen - difference), QuotaChange.LOWERED, -difference


def draw(balance: QuotaBalance, requested_fen: int, allow_partial: bool) -> tuple[QuotaBalance, int]:
    """Q4, Q5: draw `requested_fen` or, when allowed, what is available; returns the balance and what was drawn."""
    available = balance.available_fen
    if requested_fen <= available:
        drawn = requested_fen
    elif allow_partial and available > 0:
        drawn = available
    else:
        raise FailedPrecondition("the quota cannot cover this amount",
                                 reason=reasons.QUOTA_EXCEEDED, field="amount_fen")
    return replace(balance, consumed_fen=balance.consumed_fen + drawn), drawn


def reverse(balance: QuotaBalance, amount_fen: int, binding_active: bool) -> QuotaBalance:
    """Q7: a reversed amount goes back to the quota while the binding is ACTIVE, else to the giver (released)."""
    if amount_fen > balance.consumed_fen:
        raise ValueError("a reversal never exceeds what was drawn")  # check_reversal refuses it first
    consumed = balance.consumed_fen - amount_fen
    if binding_active:
        return replace(balance, consumed_fen=consumed)
    return replace(balance, consumed_fen=consumed, released_fen=balance.released_fen + amount_fen)


def release_unused(balance: QuotaBalance) -> tuple[QuotaBalance, int]:
    """Q8: the binding ended: its unused quota goes back to the giver; returns the balance and the amount."""
    unused = balance.available_fen
    return replace(balance, released_fen=balance.released_fen + unused), unused


def clearing_month(at: datetime) -> str:
    """Q10: the calendar month (Beijing time) a consumption or reversal recorded at `at` belongs to, YYYY-MM."""
    local = at.astimezone(BEIJING)
    return f"{local.year:04d}-{local.month:02d}"


def clearing_span(at: datetime) -> WindowSpan:
    """Q10: the clearing month containing `at` as a settlement window ("Q2026-03"), on the Beijing calendar."""
    month = window_containing(at, SettlementPeriod.MONTHLY)
    return WindowSpan(CLEARING_PREFIX + month.window_id, month.opens_at, month.closes_at)


def next_clearing_span(span: WindowSpan) -> WindowSpan:
    """Where consumptions and reversals go once `span` is closed: the next month (a closed month never changes)."""
    return clearing_span(span.closes_at)


@dataclass(frozen=True, slots=True)
class Quota:
    """A binding's quota as stored: its figures, how many changes it has had, and whether its end released it."""

    binding_id: str
    giver_province: str
    receiver_province: str
    balance: QuotaBalance
    version: int
    ended: bool  # its binding ended and the unused quota was released (Q8): once only
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class QuotaEvent:
    """One change of a quota (its version), as the provinces are told it: the figures after it (Q6, Q8)."""

    binding_id: str
    version: int
    change: QuotaChange
    amount_fen: int
    released_fen: int  # of amount_fen, what went back to the giver
    balance: QuotaBalance  # after the change
    cause_id: str  # the request's message_id, or the binding's ending
    consumption_id: str  # a draw's or a reversal's consumption, else ""
    clearing_window_id: str  # a draw's or a reversal's clearing month, else ""
    at: datetime
    consumption_reversed_fen: int = 0  # what had been reversed of that consumption after this change


@dataclass(frozen=True, slots=True)
class Reversal:
    """A reversal of a consumption (Q7), by its sender's message id."""

    sender: str
    message_id: str
    consumption_id: str
    binding_id: str
    amount_fen: int
    released_fen: int  # the binding had ended: the amount went back to the giver
    reason: str
    clearing_window_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class QuotaPairTotals:
    """Sums over the quotas of every binding from one province's givers to another's receivers (Q3)."""

    giver_province: str
    receiver_province: str
    balance: QuotaBalance
    consumption_count: int


# -- messages -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuotaGrant:
    """The giver's province sets a binding's quota (Q2), having frozen what a raise needs (`freeze_ref`)."""

    header: Header
    binding_id: str
    giver: PersonRef
    quota_fen: int
    freeze_ref: str


@dataclass(frozen=True, slots=True)
class QuotaConsumption:
    """The receiver's province draws on a quota for a bill settled at the point of care (Q4)."""

    header: Header  # message_id: the consumption's id
    binding_id: str
    receiver: PersonRef
    amount_fen: int  # asked for: the bill less what the receiver's own account paid
    allow_partial: bool
    kind: ConsumptionKind | None  # None: a kind the contract does not allow
    settlement_ref: str  # the province's own reference of the settlement, unique per province
    care_pooling_area: str  # where the care was given
    own_account_used_fen: int
    own_account_balance_fen: int  # the receiver's own personal account left after paying: 0 (Q4)


@dataclass(frozen=True, slots=True)
class ConsumptionReversal:
    """The receiver's province reverses a consumption, wholly or partly, by its settlement reference (Q7)."""

    header: Header
    binding_id: str
    settlement_ref: str
    amount_fen: int
    reason: str


@dataclass(frozen=True, slots=True)
class QuotaQuery:
    header: Header
    binding_id: str
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class Consumption:
    """One draw on a quota and how much of it has been reversed since (api.md "Quota states")."""

    consumption_id: str  # the receiver province's message_id
    binding_id: str
    giver_province: str
    receiver_province: str
    settlement_ref: str
    kind: ConsumptionKind
    requested_fen: int
    drawn_fen: int
    reversed_fen: int
    month: str  # the clearing month it belongs to (Q10)
    care_pooling_area: str
    created_at: datetime

    @property
    def reversible_fen(self) -> int:
        return self.drawn_fen - self.reversed_fen

    @property
    def state(self) -> str:
        """DRAWN, PARTLY_REVERSED or REVERSED (wholly)."""
        if self.reversed_fen == 0:
            return "DRAWN"
        return "REVERSED" if self.reversed_fen >= self.drawn_fen else "PARTLY_REVERSED"


def validate_grant(grant: QuotaGrant, today: date) -> None:
    validate_message_id(grant.header.message_id)
    validate_message_id(grant.binding_id, field="binding_id")
    validate_person(grant.giver, grant.header.sender, "giver", today)
    validate_amount(grant.quota_fen, "quota_fen", zero_allowed=True)  # 0: lower it to what is consumed
    validate_reference(grant.freeze_ref, "freeze_ref", max_length=FREEZE_REF_MAX)


def validate_consumption(consumption: QuotaConsumption, today: date) -> None:
    """The fields alone; rules that depend on the binding and its quota are the use case's."""
    validate_message_id(consumption.header.message_id)
    validate_message_id(consumption.binding_id, field="binding_id")
    validate_person(consumption.receiver, consumption.header.sender, "receiver", today)
    validate_pooling_area(consumption.care_pooling_area, consumption.header.sender, "care_pooling_area")
    validate_amount(consumption.amount_fen, "amount_fen")
    validate_reference(consumption.settlement_ref, "settlement_ref", max_length=SETTLEMENT_REF_MAX)
    for value, field in ((consumption.own_account_used_fen, "own_account_used_fen"),
                         (consumption.own_account_balance_fen, "own_account_balance_fen")):
        validate_amount(value, field, zero_allowed=True)


def check_point_of_care_rules(consumption: QuotaConsumption) -> None:
    """Q4: the four kinds only, and the receiver's own account first. Stored refusals, like every rule."""
    if consumption.kind is None:
        raise FailedPrecondition("a quota pays for medical care, pharmacy and resident or long-term-care premiums only",
                                 reason=reasons.KIND_NOT_ALLOWED, field="kind")
    if consumption.own_account_balance_fen > 0:
        raise FailedPrecondition("the receiver's own personal account pays first: its balance must be used up (Q4)",
                                 reason=reasons.OWN_ACCOUNT_NOT_FIRST, field="own_account_balance_fen")


def validate_reversal(reversal: ConsumptionReversal) -> None:
    validate_message_id(reversal.header.message_id)
    validate_message_id(reversal.binding_id, field="binding_id")
    validate_reference(reversal.settlement_ref, "settlement_ref", max_length=SETTLEMENT_REF_MAX)
    validate_amount(reversal.amount_fen, "amount_fen")


def check_reversal(consumption: Consumption, amount_fen: int) -> None:
    """Q7: never more than was drawn and not yet reversed."""
    if amount_fen > consumption.reversible_fen:
        raise FailedPrecondition("a reversal cannot exceed what was drawn and not yet reversed (Q7)",
                                 reason=reasons.REVERSAL_EXCEEDS_DRAWN, field="amount_fen")

