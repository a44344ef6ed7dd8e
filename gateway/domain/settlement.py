"""Settlement between provincial funds (D16-D18): windows on the Beijing calendar, figures, payments."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from gateway.domain import reasons
from gateway.domain.clock import BEIJING
from gateway.domain.envelope import Header
from gateway.domain.errors import InvalidArgument
from gateway.domain.provinces import validate_province_code
from gateway.domain.references import validate_reference

# A transfers' window (daily or monthly), or a quota clearing month "QYYYY-MM" (Q10).
WINDOW_ID_PATTERN = re.compile(r"\d{4}-\d{2}(-\d{2})?|Q\d{4}-\d{2}")
CLEARING_PREFIX = "Q"  # a clearing month's window id: "Q" + YYYY-MM, beside the transfers' windows
BANK_MAX = 64
SERIAL_NUMBER_MAX = 64


class SettlementPeriod(enum.Enum):
    DAILY = "daily"
    MONTHLY = "monthly"


class WindowState(enum.Enum):
    OPEN = "OPEN"
    CLOSED = "CLOSED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    SETTLED = "SETTLED"


@dataclass(frozen=True, slots=True)
class SettlementPolicy:
    """Scheme-wide: how long a window is, and how long after its end it is closed on schedule."""

    period: SettlementPeriod = SettlementPeriod.DAILY
    # Confirmations in flight at the window's end commit within this delay; only then are figures frozen.
    close_delay: timedelta = timedelta(minutes=10)
    close_on_schedule: bool = True


@dataclass(frozen=True, slots=True)
class WindowSpan:
    window_id: str
    opens_at: datetime  # inclusive, a Beijing midnight
    closes_at: datetime  # exclusive


def _span(start: date, period: SettlementPeriod) -> WindowSpan:
    if period is SettlementPeriod.DAILY:
        end = start + timedelta(days=1)
        window_id = start.isoformat()
    else:
        end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
        window_id = f"{start.year:04d}-{start.month:02d}"
    return WindowSpan(window_id, datetime.combine(start, time(0), tzinfo=BEIJING),
                      datetime.combine(end, time(0), tzinfo=BEIJING))


def window_containing(at: datetime, period: SettlementPeriod) -> WindowSpan:
    """The calendar window (Beijing time) that the instant `at` falls in."""
    if at.tzinfo is None:
        raise ValueError("expected a timezone-aware datetime")
    day = at.astimezone(BEIJING).date()
    return _span(day if period is SettlementPeriod.DAILY else day.replace(day=1), period)


def next_window(span: WindowSpan, period: SettlementPeriod) -> WindowSpan:
    """The window after `span`: where commits go once `span` is closed (D16, "late events")."""
    return window_containing(span.closes_at, period)


def span_of(window_id: str) -> WindowSpan:
    """The span a window id names ("2026-11-22" daily, "2026-11" monthly, "Q2026-11" a clearing month);
    InvalidArgument otherwise."""
    validate_window_id(window_id)
    try:
        if window_id.startswith(CLEARING_PREFIX):
            month = _span(date.fromisoformat(window_id[1:] + "-01"), SettlementPeriod.MONTHLY)
            span = WindowSpan(window_id, month.opens_at, month.closes_at)
        elif len(window_id) == 10:
            span = _span(date.fromisoformat(window_id), SettlementPeriod.DAILY)
        else:
            span = _span(date.fromisoformat(window_id + "-01"), SettlementPeriod.MONTHLY)
        # At the ends of the calendar (0001-01-01, 9999-12-31) the span's bounds cannot be expressed in UTC.
        for bound in (span.opens_at, span.closes_at):
            bound.astimezone(UTC)
        return span
    except (ValueError, OverflowError):
        raise InvalidArgument("window_id is not a real day or month", reason=reasons.INVALID_WINDOW_ID,
                              field="window_id") from None


def validate_window_id(window_id: str, field_name: str = "window_id") -> None:
    if not WINDOW_ID_PATTERN.fullmatch(window_id):
        raise InvalidArgument("window_id must be YYYY-MM-DD (daily), YYYY-MM (monthly) or QYYYY-MM (clearing month)",
                              reason=reasons.INVALID_WINDOW_ID, field=field_name)


@dataclass(frozen=True, slots=True)
class PairFigure:
    """Gross amount owed by the givers' province (from) to the receivers' province (to), D17."""

    from_province: str
    to_province: str
    gross_fen: int
    transfer_count: int


@dataclass(frozen=True, slots=True)
class ClearingLine:
    """A clearing month's figures for one ordered pair (Q10): the givers' province's fund owes the receivers'
    province's fund the month's consumptions less its reversals (negative: the receivers' province owes it)."""

    from_province: str  # the givers' province
    to_province: str  # the receivers' province
    consumed_fen: int
    reversed_fen: int
    consumption_count: int
    reversal_count: int

    @property
    def net_fen(self) -> int:
        return self.consumed_fen - self.reversed_fen


def is_clearing_window(window_id: str) -> bool:
    return window_id.startswith(CLEARING_PREFIX)


@dataclass(frozen=True, slots=True)
class Position:
    province: str
    net_fen: int  # received minus paid; negative: the province pays


def net_positions(pairs: Iterable[PairFigure], lines: Iterable[ClearingLine] = ()) -> list[Position]:
    """Each province's net position; by construction they sum to zero (D17)."""
    net: dict[str, int] = {}
    owed = [(p.from_province, p.to_province, p.gross_fen) for p in pairs]
    owed += [(line.from_province, line.to_province, line.net_fen) for line in lines]
    for from_province, to_province, amount in owed:
        net[from_province] = net.get(from_province, 0) - amount
        net[to_province] = net.get(to_province, 0) + amount
    return [Position(code, net[code]) for code in sorted(net)]


def provinces_in(pairs: Iterable[PairFigure | ClearingLine]) -> list[str]:
    return sorted({code for pair in pairs for code in (pair.from_province, pair.to_province)})


@dataclass(frozen=True, slots=True)
class Figures:
    """A closed window's frozen figures, as signed and sent to the provinces."""

    window_id: str
    opens_at: datetime
    closes_at: datetime
    pairs: tuple[PairFigure, ...]
    lines: tuple[ClearingLine, ...] = ()  # a clearing month's (Q10); its pairs are empty

    @property
    def positions(self) -> list[Position]:
        return net_positions(self.pairs, self.lines)

    def concerning(self, province: str) -> Figures:
        """The part of the figures a province is shown: its own pairs (GetSettlement, NotifySettlement)."""
        return Figures(self.window_id, self.opens_at, self.closes_at,
                       tuple(p for p in self.pairs if province in (p.from_province, p.to_province)),
                       tuple(line for line in self.lines if province in (line.from_province, line.to_province)))


@dataclass(frozen=True, slots=True)
class Payment:
    """The payment reference of one pair (D18)."""

    from_province: str
    to_province: str
    bank: str
    serial_number: str
    paid_on: date


def validate_payment(from_province: str, to_province: str, bank: str, serial_number: str, paid_on: str,
                     index: int, today: date) -> Payment:
    prefix = f"payments[{index}]"
    validate_province_code(from_province, f"{prefix}.from_province")
    validate_province_code(to_province, f"{prefix}.to_province")
    # The bank is named by its code (e.g. ICBC, or its 12-digit CNAPS number), not by a free-text name.
    validate_reference(bank, f"{prefix}.bank", max_length=BANK_MAX, reason=reasons.INVALID_BANK)
    validate_reference(serial_number, f"{prefix}.serial_number", max_length=SERIAL_NUMBER_MAX,
                       reason=reasons.INVALID_SERIAL_NUMBER)
    try:
        day = date.fromisoformat(paid_on) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", paid_on) else None
    except ValueError:
        day = None
    if day is None:
        raise InvalidArgument("date must be a real YYYY-MM-DD day", reason=reasons.INVALID_PAYMENT_DATE,
                              field=f"{prefix}.date")
    if day > today:
        raise InvalidArgument("a payment cannot be dated in the future", reason=reasons.INVALID_PAYMENT_DATE,
                              field=f"{prefix}.date")
    return Payment(from_province, to_province, bank, serial_number, day)


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    province: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SettlementWindow:
    """A window as operators see it."""

    window_id: str
    state: WindowState
    opens_at: datetime
    closes_at: datetime
    closed_at: datetime | None = None
    pairs: tuple[PairFigure, ...] = ()
    acknowledgements: tuple[Acknowledgement, ...] = ()
    payments: tuple[Payment, ...] = field(default=())
    lines: tuple[ClearingLine, ...] = ()  # a clearing month's figures (Q10); its pairs are then empty

    @property
    def positions(self) -> list[Position]:
        return net_positions(self.pairs, self.lines)

    @property
    def provinces(self) -> list[str]:
        return provinces_in((*self.pairs, *self.lines))

    @property
    def payable(self) -> set[tuple[str, str]]:
        """The ordered pairs a payment is due for (D18): every transfer pair; every clearing line whose net is
        not 0 (named by the line's pair whichever way its money goes: a negative net is paid by the receivers'
        province to the givers')."""
        return ({(p.from_province, p.to_province) for p in self.pairs}
                | {(line.from_province, line.to_province) for line in self.lines if line.net_fen != 0})

    @property
    def acknowledged_by(self) -> list[str]:
        return sorted(a.province for a in self.acknowledgements)


@dataclass(frozen=True, slots=True)
class SettlementQuery:
    header: Header
    window_id: str  # empty: the latest closed window


@dataclass(frozen=True, slots=True)
class SettlementAcknowledgement:
    header: Header
    window_id: str
    figures_sha256: bytes
