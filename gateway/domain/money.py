"""Amounts in whole fen (D11) and the bound that keeps every sum of them inside a signed 64-bit integer."""

from __future__ import annotations

from gateway.domain import reasons
from gateway.domain.errors import InvalidArgument

# Ten billion yuan: far above any personal account, and far below 2**63 - 1 (about 9.2e18 fen). A sum the
# gateway computes (a binding's used amount, a window's gross figure, the monitoring totals) reaches 2**63
# only after more than nine million amounts at this bound, i.e. 9e16 yuan, beyond all money in existence.
MAX_AMOUNT_FEN = 10**12


def validate_amount(amount_fen: int, field: str, *, zero_allowed: bool = False) -> None:
    """Whole fen, positive (or 0 where 0 means "none"), at most MAX_AMOUNT_FEN."""
    low = 0 if zero_allowed else 1
    if not low <= amount_fen <= MAX_AMOUNT_FEN:
        what = "0 or more" if zero_allowed else "strictly positive"
        raise InvalidArgument(f"{field} must be whole fen, {what}, at most {MAX_AMOUNT_FEN} (D11)",
                              reason=reasons.INVALID_AMOUNT, field=field)
