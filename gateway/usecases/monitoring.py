"""Operators' view of the exchange: pages of transfers that stay correct while new ones arrive, and stats."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from gateway.domain import reasons
from gateway.domain.envelope import MESSAGE_ID_PATTERN
from gateway.domain.errors import InvalidArgument, NotFound
from gateway.domain.monitoring import (
    FeedStart,
    PendingEnd,
    Stats,
    TransferChange,
    TransferFilter,
    TransferInspection,
    TransferPage,
)
from gateway.domain.outbox import OutboxKind
from gateway.domain.provinces import validate_province_code
from gateway.domain.quota import QuotaBalance
from gateway.domain.settlement import WindowState
from gateway.domain.transfers import INT64_MAX, Transfer, TransferState, validate_message_id
from gateway.usecases.context import UseCaseContext
from gateway.usecases.outbox import DESTINATION_UNREACHABLE
from gateway.usecases.ports import RunInDb, UnitOfWorkFactory

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def position_token(created_at: datetime, row_id: str) -> str:
    """A page token: the position (creation time, id) of the last row shown, opaque to the caller."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def token_position(token: str) -> tuple[datetime, str]:
    """The position a page token holds; INVALID_PAGE_TOKEN for anything the gateway could not have given out."""
    try:
        created_at, _, transfer_id = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        position = datetime.fromisoformat(created_at)
        position.astimezone(UTC)  # a forged time at the calendar's ends (0001-01-01+14:00) has no UTC instant
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as error:
        raise InvalidArgument("page_token is not one this gateway gave out", reason=reasons.INVALID_PAGE_TOKEN,
                              field="page_token") from error
    # The id goes into a query: only ids the gateway could have given out (no NUL, no megabytes).
    if position.tzinfo is None or not MESSAGE_ID_PATTERN.fullmatch(transfer_id):
        raise InvalidArgument("page_token is not one this gateway gave out", reason=reasons.INVALID_PAGE_TOKEN,
                              field="page_token")
    return position, transfer_id


# The messages about a transfer; a binding's id may equal a transfer's, and its messages are not this one's.
TRANSFER_MESSAGES = (OutboxKind.DELIVER_TRANSFER, OutboxKind.NOTIFY_TRANSFER_OUTCOME)
# One delivery and an outcome notice to each province: three; the bound is room to spare, not a page.
TRANSFER_MESSAGES_AT_MOST = 8


def pending_end(transfer: Transfer) -> PendingEnd | None:
    """What ends the transfer if nothing else does first: undelivered, it is REJECTED at its delivery deadline;
    delivered and unconfirmed, RETURNED at its return deadline (D13); final, nothing."""
    if transfer.state is TransferState.RECEIVED:
        return PendingEnd(TransferState.REJECTED, transfer.delivery_deadline, DESTINATION_UNREACHABLE)
    if transfer.state is TransferState.DELIVERED:
        return PendingEnd(TransferState.RETURNED, transfer.return_deadline, reasons.CONFIRMATION_DEADLINE_PASSED)
    return None


def inspect_transfer(ctx: UseCaseContext, transfer_id: str) -> TransferInspection:
    """One transfer with its history, the messages owed about it (attempts, last error, next retry) and when
    it ends if nothing else happens, for operators (the view holds masked ID numbers only)."""
    validate_message_id(transfer_id, field="transfer_id")
    with ctx.uow(read_only=True) as uow:
        transfer = uow.transfers.get(transfer_id, with_history=True)
        messages = (uow.outbox.of_subject(transfer_id, TRANSFER_MESSAGES, TRANSFER_MESSAGES_AT_MOST)
                    if transfer is not None else [])
    if transfer is None:
        raise NotFound("no such transfer", reason=reasons.TRANSFER_NOT_FOUND, field="transfer_id")
    return TransferInspection(transfer, tuple(messages), pending_end(transfer))


def list_transfers(ctx: UseCaseContext, where: TransferFilter, page_token: str, page_size: int,
                   newest_first: bool = True) -> TransferPage:
    """One page newest first (or oldest first) by (created_at, transfer_id); the token resumes after the last
    one shown, in the same order, exactly, while new transfers arrive."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be within 0..{MAX_PAGE_SIZE}", reason=reasons.INVALID_PAGE_SIZE,
                              field="page_size")
    for code, name in ((where.giver_province, "giver_province"), (where.receiver_province, "receiver_province")):
        if code:
            validate_province_code(code, name)
    size = page_size or DEFAULT_PAGE_SIZE
    after = token_position(page_token) if page_token else None
    with ctx.uow(read_only=True) as uow:
        rows = uow.transfers.page(where, after, size + 1, newest_first=newest_first)
    more = len(rows) > size
    rows = rows[:size]
    return TransferPage(rows, position_token(rows[-1].created_at, rows[-1].transfer_id) if more else "")


WATCH_BATCH = 500
WATCH_POLL_SECONDS = 0.1


def _changes_after(ctx: UseCaseContext, position: int, limit: int) -> list[TransferChange]:
    with ctx.uow(read_only=True) as uow:
        return uow.transfers.changes_after(position, limit)


def _last_change(ctx: UseCaseContext) -> int:
    with ctx.uow(read_only=True) as uow:
        return uow.transfers.last_change()


def _writers_horizon(ctx: UseCaseContext) -> datetime | None:
    with ctx.uow(read_only=True) as uow:
        return uow.transfers.writers_horizon()


def _writers_ended(ctx: UseCaseContext, horizon: datetime | None) -> bool:
    with ctx.uow(read_only=True) as uow:
        return uow.transfers.writers_ended(horizon)


async def watch_transfers(ctx: UseCaseContext, run_in_db: RunInDb,
                          from_cursor: str) -> AsyncIterator[FeedStart | TransferChange]:
    """Where the feed starts (first), then every state change after it, in the order recorded, for ever.

    The start is the cursor given, or the last change recorded when the watch began ("from now"): a watcher
    that waits for it knows that whatever it does afterwards shows in the feed.

    Each watcher reads the database at its own pace: one that stops reading only stops itself, as
    gRPC's flow control holds its stream; nothing is queued for it in the gateway.
    """
    if from_cursor:
        # A cursor is a change's number, an int64: longer strings would not even convert (int() refuses
        # more than 4300 digits) and larger numbers overflow the database's integers.
        if not (from_cursor.isascii() and from_cursor.isdigit() and len(from_cursor) <= 19
                and int(from_cursor) <= INT64_MAX):
            raise InvalidArgument("from_cursor is not one this gateway gave out", reason=reasons.INVALID_CURSOR,
                                  field="from_cursor")
        position = int(from_cursor)
    else:
        position = await run_in_db(_last_change, ctx)
    yield FeedStart(position)
    # PostgreSQL numbers a change when it is written, not when it commits: a missing number may belong to a
    # transaction still running (waiting on a lock, say), or to one rolled back. The gap is passed only
    # once every writing transaction of the database begun when it was seen has ended, and the changes are
    # read again after that.
    gap_seen, gap_horizon = False, None
    while True:
        writers_ended = gap_seen and await run_in_db(_writers_ended, ctx, gap_horizon)
        batch: list[TransferChange] = await run_in_db(_changes_after, ctx, position, WATCH_BATCH)
        for change in batch:
            if change.position != position + 1 and not writers_ended:
                if not gap_seen:
                    gap_seen, gap_horizon = True, await run_in_db(_writers_horizon, ctx)
                break
            gap_seen, gap_horizon, writers_ended = False, None, False
            yield change
            position = change.position
        if len(batch) < WATCH_BATCH or gap_seen:
            await asyncio.sleep(WATCH_POLL_SECONDS)


def get_stats(ctx: UseCaseContext) -> Stats:
    with ctx.uow(read_only=True) as uow:
        stats = uow.transfers.stats()
        windows = uow.settlements.counts_by_state()
        months = uow.settlements.counts_by_state(clearing=True)
        quota_pairs = uow.totals.quota_pairs()
    return dataclasses.replace(stats, settlement_windows={state.value: windows.get(state, 0) for state in WindowState},
                               quota_pairs=quota_pairs,
                               clearing_months={state.value: months.get(state, 0) for state in WindowState})


ZERO = QuotaBalance()
K = TypeVar("K")


def recount_totals(uow_factory: UnitOfWorkFactory) -> list[str]:
    """Recompute the operators' running totals from every row, in one snapshot: what differs, [] if they agree."""
    with uow_factory(read_only=True) as uow:
        kept, counted = uow.totals.read(), uow.totals.recount()
        kept_quotas, counted_quotas = uow.totals.quota_pairs(), uow.totals.recount_quota_pairs()
        windows_kept, windows_counted = uow.totals.settlements(), uow.totals.settlements(recount=True)
    kept_pairs = {(f.giver_province, f.receiver_province, f.state): (f.count, f.amount_fen) for f in kept.transfers}
    counted_pairs = {(f.giver_province, f.receiver_province, f.state): (f.count, f.amount_fen)
                     for f in counted.transfers}
    kept_figures = {(q.giver_province, q.receiver_province): q.balance for q in kept_quotas if q.balance != ZERO}
    counted_figures = {(q.giver_province, q.receiver_province): q.balance for q in counted_quotas
                       if q.balance != ZERO}
    return [
        *_differences(kept_pairs, counted_pairs, lambda k: f"transfers {k[0]}->{k[1]} {k[2].value}", (0, 0),
                      " (count, fen)", order=lambda k: (k[0], k[1], k[2].value)),
        *_differences(kept.outbox, counted.outbox, lambda d: f"outbox {d}"),
        *_differences(kept_figures, counted_figures, lambda pair: f"quotas {pair[0]}->{pair[1]}"),
        *_differences(windows_kept, windows_counted, lambda k: f"settlement window {k[0]} {k[1]}->{k[2]}", (0, 0),
                      " (count, fen)"),
    ]


def _differences(kept: Mapping[K, object], counted: Mapping[K, object], name: Callable[[K], str],
                 absent: object = None, unit: str = "", order: Callable[[K], Any] | None = None) -> list[str]:
    """One line for each key whose kept figure is not the counted one (a key missing on one side: `absent`)."""
    return [f"{name(key)}: kept {kept.get(key, absent)}{unit}, counted {counted.get(key, absent)}"
            for key in sorted(kept.keys() | counted.keys(), key=order)  # type: ignore[type-var, arg-type]
            if kept.get(key, absent) != counted.get(key, absent)]
