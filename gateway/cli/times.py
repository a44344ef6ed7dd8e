"""Times as operators type them: Beijing time unless an offset is given (windows, limits and returns are)."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.cli.output import fail
from gateway.domain.clock import BEIJING

TIME_HELP = "YYYY-MM-DD[ HH:MM[:SS]] in Beijing time, or ISO 8601 with an offset (e.g. 2026-05-04T08:00:00Z)"


def parse_time(value: str, option: str) -> datetime:
    """A time an operator typed: a day (its Beijing midnight), a Beijing date and time, or any ISO 8601 time with
    its offset; anything else is a usage error naming the option."""
    try:
        at = datetime.fromisoformat(value.strip())
        if at.tzinfo is None:
            at = at.replace(tzinfo=BEIJING)
        at.astimezone(BEIJING)  # a time at the calendar's ends has no instant in another zone
    except (ValueError, OverflowError):
        fail(f"{option}: {value!r} is not a time: {TIME_HELP}", 2)
    return at


def timestamp_of(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp
