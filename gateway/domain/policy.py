"""Transfer policy rules (D10, D12): the Beijing blackout window, the Beijing day, the limits and what counts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, time, timedelta

from gateway.domain import reasons
from gateway.domain.clock import BEIJING
from gateway.domain.eligibility import Violation
from gateway.domain.provinces import Policy, effective_policy
from gateway.domain.transfers import TransferState

AMOUNT_FIELD = "amount_fen"
MINUTES_PER_DAY = 24 * 60
FAILED_STATES = frozenset({TransferState.DECLINED, TransferState.RETURNED, TransferState.REJECTED})


def _require_aware(at: datetime) -> None:
    # A naive datetime would be read in the server's own zone by astimezone(), which is exactly
    # the dependence on the machine's TZ that D12 ("Beijing time") rules out.
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("expected a timezone-aware datetime")


def beijing_time(at: datetime) -> datetime:
    """`at` on the Beijing (Asia/Shanghai) wall clock; raises ValueError for a naive datetime."""
    _require_aware(at)
    return at.astimezone(BEIJING)


def beijing_day(at: datetime) -> date:
    """The Beijing calendar day of the instant `at` (it starts at 16:00 UTC the day before)."""
    return beijing_time(at).date()


def beijing_day_window(day: date) -> tuple[datetime, datetime]:
    """The instants [start, end) of a Beijing calendar day, for counting a day's transfers."""
    start = datetime.combine(day, time(0), tzinfo=BEIJING)
    return start, datetime.combine(day + timedelta(days=1), time(0), tzinfo=BEIJING)


def count_on_beijing_day(instants: Iterable[datetime], day: date) -> int:
    """How many of `instants` fall on the Beijing calendar day `day`."""
    return sum(1 for at in instants if beijing_day(at) == day)


def in_blackout(at: datetime, policy: Policy) -> bool:
    """D12: `at` falls in the window [start, end) of minutes after Beijing midnight.

    start > end wraps midnight (the default 22:00–06:00); start == end means no blackout at all,
    because an all-day blackout would forbid every transfer and is not a policy anyone sets.
    `policy` may be a province's overrides: the national defaults fill what it leaves None.
    """
    effective = effective_policy(policy)
    start, end = effective.blackout_start_minute, effective.blackout_end_minute
    assert start is not None and end is not None  # effective_policy fills every field
    local = beijing_time(at)
    # Whole minutes suffice: every second of 21:59 lies before 22:00, every second of 05:59 before 06:00.
    minute = local.hour * 60 + local.minute
    if start == end:
        return False
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def check_transfer_limits(
    amount_fen: int,
    transfers_today_by_giver: int,
    at: datetime,
    policy: Policy,
    authorised_amount_fen: int | None,
    used_amount_fen: int,
) -> list[Violation]:
    """Every D12 and D10 limit a submission at `at` breaks (empty list: within the limits).

    `policy` is the giver's province's. `transfers_today_by_giver` counts the giver's non-failed
    transfers earlier on the same Beijing day (beijing_day_window); `used_amount_fen` sums the
    non-failed transfers on the binding; `authorised_amount_fen` None means the binding has no cap.
    The amount's own validity (D11) is checked with the instruction, not here.
    """
    if transfers_today_by_giver < 0 or used_amount_fen < 0:
        raise ValueError("counts and sums of earlier transfers cannot be negative")
    effective = effective_policy(policy)
    daily_limit, max_fen = effective.daily_transfer_limit, effective.max_transfer_fen
    assert daily_limit is not None and max_fen is not None  # effective_policy fills every field
    violations = []
    if in_blackout(at, effective):
        violations.append(Violation(reasons.TRANSFER_BLACKOUT, "D12", ""))
    # The limit counts earlier transfers: with a limit of 3 the 4th of the day is the first refused.
    if transfers_today_by_giver >= daily_limit:
        violations.append(Violation(reasons.DAILY_LIMIT_REACHED, "D12", ""))
    if amount_fen > max_fen:
        violations.append(Violation(reasons.AMOUNT_OVER_LIMIT, "D12", AMOUNT_FIELD))
    if authorised_amount_fen is not None and used_amount_fen + amount_fen > authorised_amount_fen:
        violations.append(Violation(reasons.AUTHORISED_AMOUNT_EXCEEDED, "D10", AMOUNT_FIELD))
    return violations


def gives_its_place_back(from_state: TransferState, to: TransferState) -> bool:
    """D10, D12: a transfer counts against its binding's authorised amount and its giver's transfers of the
    (Beijing) day from its submission on, unless it fails: the change that makes it fail, from a state not yet
    final to DECLINED, RETURNED or REJECTED, gives its place back. A final state never changes, so that is once."""
    return to in FAILED_STATES and not from_state.is_final
