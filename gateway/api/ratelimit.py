"""Per-province rate limits: a token bucket per calling province, spent once the call is proven its own."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from gateway.domain.clock import Clock
from gateway.domain.errors import RateLimited


@dataclass
class TokenBucket:
    """`rate` tokens a second up to `burst`; each call takes one. Time is read from an injected clock."""

    rate: float
    burst: float
    tokens: float
    updated: datetime

    def take(self, now: datetime) -> bool:
        # A clock that steps back refills nothing (and takes nothing away).
        elapsed = max(0.0, (now - self.updated).total_seconds())
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = max(self.updated, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ProvinceRateLimits:
    """One bucket per province, created full on its first call; `rate` 0 turns the limits off.

    Why the budget is spent in authentication (`UseCaseContext.admit`) rather than in a gRPC interceptor:
    an interceptor sees the method and metadata only, and the envelope's `signer` is a claim anyone can
    write; charging it there would let a flood of forged calls in a province's name spend that province's
    budget. Charged once the call is proven to be the province's own (api.md's order: algorithm, key,
    signature, then signer = the TLS caller), a bucket is only ever spent by its own province: forgeries,
    and genuine envelopes another province replays (DeliverTransfer passes instructions on), cost it
    nothing. A refused call stops there: before its payload is decoded, before idempotency, before
    anything is written. Buckets exist only for verified signers, so their number is bounded by the
    routing table.
    """

    def __init__(self, rate_per_second: float, burst: float, clock: Clock, counted: str = "calls") -> None:
        self.rate = rate_per_second
        self.burst = burst
        self._counted = counted  # what the budget counts, as its refusal names it
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()  # use cases run on a thread pool with PostgreSQL

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def admit(self, province: str) -> None:
        """Take one token from `province`'s bucket, or raise RateLimited (RESOURCE_EXHAUSTED)."""
        if not self.enabled:
            return
        now = self._clock.now()
        with self._lock:
            bucket = self._buckets.get(province)
            if bucket is None:
                bucket = self._buckets[province] = TokenBucket(self.rate, self.burst, self.burst, now)
            if bucket.take(now):
                return
        raise RateLimited(f"province {province} is over its rate limit ({self.rate:g} {self._counted} a second, "
                          f"bursts of {self.burst:g}); nothing was done: retry later with the same message_id")
