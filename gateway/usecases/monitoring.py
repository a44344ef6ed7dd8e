"""Operators' view of the exchange: pages of transfers that stay correct while new ones arrive, and stats."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from gateway.domain.errors import InvalidArgument
from gateway.domain.monitoring import Stats, TransferFilter, TransferPage
from gateway.domain.provinces import validate_province_code
from gateway.usecases.context import UseCaseContext

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def _token(created_at: datetime, transfer_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{transfer_id}".encode()).decode()


def _position(token: str) -> tuple[datetime, str]:
    try:
        created_at, _, transfer_id = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        position = datetime.fromisoformat(created_at)
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise InvalidArgument("page_token is not one this gateway gave out", reason="INVALID_PAGE_TOKEN",
                              field="page_token") from error
    if position.tzinfo is None or not transfer_id:
        raise InvalidArgument("page_token is not one this gateway gave out", reason="INVALID_PAGE_TOKEN",
                              field="page_token")
    return position, transfer_id


def list_transfers(ctx: UseCaseContext, where: TransferFilter, page_token: str, page_size: int) -> TransferPage:
    """One page in (created_at, transfer_id) order; the token resumes after the last one shown."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be within 0..{MAX_PAGE_SIZE}", reason="INVALID_PAGE_SIZE",
                              field="page_size")
    for code, name in ((where.giver_province, "giver_province"), (where.receiver_province, "receiver_province")):
        if code:
            validate_province_code(code, name)
    size = page_size or DEFAULT_PAGE_SIZE
    after = _position(page_token) if page_token else None
    with ctx.uow() as uow:
        rows = uow.transfers.page(where, after, size + 1)
    more = len(rows) > size
    rows = rows[:size]
    return TransferPage(rows, _token(rows[-1].created_at, rows[-1].transfer_id) if more else "")


def get_stats(ctx: UseCaseContext) -> Stats:
    with ctx.uow() as uow:
        return uow.transfers.stats()
