"""What operators ask of the exchange: filtered pages of transfers and summary figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

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
class PairStateFigure:
    giver_province: str
    receiver_province: str
    state: TransferState
    count: int
    amount_fen: int


@dataclass(frozen=True, slots=True)
class Stats:
    transfers: list[PairStateFigure] = field(default_factory=list)
    outbox_backlog: int = 0
    oldest_undelivered: datetime | None = None
    failed_attempts_by_province: dict[str, int] = field(default_factory=dict)
