"""Time as the domain sees it: an injectable clock, always timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

BEIJING = ZoneInfo("Asia/Shanghai")


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class OffsetClock:
    """The system clock moved by an adjustable offset, so tests can jump to a deadline without waiting."""

    def __init__(self) -> None:
        self._offset_seconds = 0.0

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._offset_seconds)

    def advance(self, seconds: float) -> None:
        self._offset_seconds += seconds
