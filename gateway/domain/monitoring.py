"""What operators ask of the exchange: filtered pages of transfers, summary figures, the dashboard's snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.domain.bindings import Binding
from gateway.domain.outbox import OutboxRecord
from gateway.domain.provinces import Province
from gateway.domain.quota import QuotaPairTotals
from gateway.domain.settlement import SettlementWindow
from gateway.domain.transfers import Transfer, TransferState


@dataclass(frozen=True, slots=True)
class TransferFilter:
    """Filters combine with AND; empty means "any"."""

    states: tuple[TransferState, ...] = ()
    giver_province: str = ""
    receiver_province: str = ""
    created_from: datetime | None = None
    created_to: datetime | None = None


@dataclass(frozen=True, slots=True)
class TransferPage:
    transfers: list[Transfer]
    next_page_token: str  # empty on the last page


@dataclass(frozen=True, slots=True)
class PendingEnd:
    """How a transfer not yet final ends if nothing else happens first: its state, when, and the reason given."""

    state: TransferState
    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class TransferInspection:
    """A transfer as operators inspect it: its history, the messages owed about it, and its pending end."""

    transfer: Transfer
    messages: tuple[OutboxRecord, ...]
    pending_end: PendingEnd | None  # None once final


@dataclass(frozen=True, slots=True)
class BindingPage:
    bindings: list[Binding]
    next_page_token: str  # empty on the last page


@dataclass(frozen=True, slots=True)
class BindingInspection:
    """A binding as operators inspect it (masked ID numbers only), with the messages owed about it."""

    binding: Binding
    messages: tuple[OutboxRecord, ...]


@dataclass(frozen=True, slots=True)
class TransferChange:
    """One state a transfer entered; `position` orders all changes (the change feed's cursor)."""

    position: int
    transfer_id: str
    state: TransferState
    at: datetime
    reason: str
    giver_province: str
    receiver_province: str
    amount_fen: int


@dataclass(frozen=True, slots=True)
class FeedStart:
    """Where a change feed begins: every change after `position` follows, in order."""

    position: int


@dataclass(frozen=True, slots=True)
class PairStateFigure:
    giver_province: str
    receiver_province: str
    state: TransferState
    count: int
    amount_fen: int


@dataclass(frozen=True, slots=True)
class OutboxFigures:
    """One destination's outbox: messages waiting, send attempts, acknowledged messages."""

    pending: int
    attempts: int
    done: int

    @property
    def failed_attempts(self) -> int:
        """Every attempt but the one that succeeded failed (a message leased and in flight counts too)."""
        return self.attempts - self.done


@dataclass(frozen=True, slots=True)
class Totals:
    """The running totals behind the operators' reads (or the same, recounted from the rows)."""

    transfers: list[PairStateFigure]
    outbox: dict[str, OutboxFigures]


@dataclass(frozen=True, slots=True)
class Stats:
    transfers: list[PairStateFigure] = field(default_factory=list)
    outbox_backlog: int = 0
    oldest_undelivered: datetime | None = None
    failed_attempts_by_province: dict[str, int] = field(default_factory=dict)
    # Settlement windows by state name (OPEN, CLOSED, ACKNOWLEDGED, SETTLED).
    settlement_windows: dict[str, int] = field(default_factory=dict)
    # Quota figures by ordered province pair (Q3), from the running totals.
    quota_pairs: list[QuotaPairTotals] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StuckTransfer:
    """A transfer not final long after it arrived; only what operators need, never a person (D19)."""

    transfer_id: str
    state: TransferState
    giver_province: str
    receiver_province: str
    amount_fen: int
    created_at: datetime
    updated_at: datetime
    age: timedelta
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PairFlow:
    """Money between one ordered pair of provinces: committed, still in flight, and ended otherwise."""

    giver_province: str
    receiver_province: str
    committed_count: int = 0
    committed_fen: int = 0
    in_flight_count: int = 0
    in_flight_fen: int = 0
    failed_count: int = 0
    failed_fen: int = 0


@dataclass(frozen=True, slots=True)
class ProvinceFlow:
    """One province's committed money out (as the giver's side) and in (as the receiver's side)."""

    province: str
    out_count: int = 0
    out_fen: int = 0
    in_count: int = 0
    in_fen: int = 0
    out_in_flight_fen: int = 0
    in_in_flight_fen: int = 0


def pair_flows(figures: list[PairStateFigure]) -> tuple[PairFlow, ...]:
    """Stats by pair and state folded into one line per pair, in (giver, receiver) order."""
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for figure in figures:
        pair = totals.setdefault((figure.giver_province, figure.receiver_province), {})
        kind = ("committed" if figure.state is TransferState.COMMITTED
                else "failed" if figure.state.is_final else "in_flight")
        pair[f"{kind}_count"] = pair.get(f"{kind}_count", 0) + figure.count
        pair[f"{kind}_fen"] = pair.get(f"{kind}_fen", 0) + figure.amount_fen
    return tuple(PairFlow(giver, receiver, **values) for (giver, receiver), values in sorted(totals.items()))


def province_flows(pairs: tuple[PairFlow, ...], provinces: list[str]) -> tuple[ProvinceFlow, ...]:
    """Each province's flows in and out, for every province named and every one seen in a pair."""
    codes = sorted({*provinces, *(p.giver_province for p in pairs), *(p.receiver_province for p in pairs)})
    return tuple(
        ProvinceFlow(
            province=code,
            out_count=sum(p.committed_count for p in pairs if p.giver_province == code),
            out_fen=sum(p.committed_fen for p in pairs if p.giver_province == code),
            in_count=sum(p.committed_count for p in pairs if p.receiver_province == code),
            in_fen=sum(p.committed_fen for p in pairs if p.receiver_province == code),
            out_in_flight_fen=sum(p.in_flight_fen for p in pairs if p.giver_province == code),
            in_in_flight_fen=sum(p.in_flight_fen for p in pairs if p.receiver_province == code),
        )
        for code in codes
    )


@dataclass(frozen=True, slots=True)
class DashboardSnapshot:
    """Everything the operators' dashboard shows at one moment; no ID number, name or person hash (D19)."""

    at: datetime
    stuck_after: timedelta
    provinces: tuple[Province, ...]
    recent_changes: tuple[TransferChange, ...]  # newest first
    stats: Stats
    pairs: tuple[PairFlow, ...]
    flows: tuple[ProvinceFlow, ...]
    stuck: tuple[StuckTransfer, ...]  # oldest first
    stuck_more: bool = False  # more stuck transfers than listed
    windows: tuple[SettlementWindow, ...] = ()  # the newest few, with their positions
