"""The operators' warnings about deliveries and transfers that failed: rate-limited, ids and reasons only (D19)."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

log = logging.getLogger("gateway.operations")

# Each kind of line, per province, at most once in this many seconds: an outage cannot flood the log; what
# happened meanwhile is summed into the next line.
EVERY_SECONDS = 30.0


@dataclass
class _Held:
    last_logged: float = float("-inf")
    count: int = 0  # since the last line
    last_error: str = ""
    next_retry: datetime | None = None
    examples: list[str] = field(default_factory=list)


class OperatorsLog:
    """Warnings an operator can act on. Thread-safe; each key (kind, province) logs at most once per interval."""

    def __init__(self, every_seconds: float = EVERY_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], _Held] = defaultdict(_Held)

    def failed_deliveries(self, province: str, count: int, error: str, next_retry: datetime) -> None:
        """`count` attempts to reach `province` failed (its last error), retried from `next_retry`."""
        with self._lock:
            held = self._held[("delivery", province)]
            held.count += count
            held.last_error, held.next_retry = error, next_retry
            if not self._due(held):
                return
            line = (held.count, held.last_error, held.next_retry)
            held.count = 0
        log.warning("deliveries to province %s failing: %d attempt(s) failed since the last report (last error: "
                    "%s); next retry at %s", province, line[0], line[1] or "unknown", _utc(line[2]))

    def transfer_failed(self, transfer_id: str, giver: str, receiver: str, state: str, reason: str) -> None:
        """A transfer ended REJECTED or RETURNED (it moved no money; both provinces are being told)."""
        with self._lock:
            held = self._held[("transfer", receiver)]
            if not self._due(held):
                held.count += 1
                if len(held.examples) < 3:
                    held.examples.append(transfer_id)
                return
            held_back, examples = held.count, held.examples
            held.count, held.examples = 0, []
        more = (f"; {held_back} more to province {receiver} since the last report, e.g. {', '.join(examples)}"
                if held_back else "")
        log.warning("transfer %s %s->%s ended %s (%s)%s", transfer_id, giver, receiver, state, reason or "no reason",
                    more)

    def _due(self, held: _Held) -> bool:
        now = self._clock()
        if now - held.last_logged < self._every:
            return False
        held.last_logged = now
        return True


def _utc(at: datetime | None) -> str:
    return "unknown" if at is None else at.isoformat(timespec="seconds")
