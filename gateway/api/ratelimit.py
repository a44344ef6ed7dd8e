"""Per-province rate limits: a token bucket per calling province, spent once its signature verifies."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from gateway.domain.clock import Clock
from gateway.domain.envelope import Envelope
from gateway.domain.errors import RateLimited
from gateway.usecases.ports import SignatureVerifier


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

    Why the budget is spent in signature verification rather than in a gRPC interceptor: until mutual
    TLS, the only proof of who calls is the envelope's signature. An interceptor sees the method and
    metadata only, and the envelope's `signer` is a claim anyone can write: charging it before
    verification would let a flood of forged calls in a province's name spend that province's
    budget. Charged right after the signature verifies (api.md's order: algorithm, key, signature),
    a bucket is only ever spent by its own province's key, and a refused call stops there: before
    its payload is decoded, before idempotency, before anything is written. Buckets exist only for
    verified signers, so their number is bounded by the routing table.
    """

    def __init__(self, rate_per_second: float, burst: float, clock: Clock) -> None:
        self.rate = rate_per_second
        self.burst = burst
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
        raise RateLimited(f"province {province} is over its rate limit ({self.rate:g} calls a second, bursts of "
                          f"{self.burst:g}); nothing was done: retry later with the same message_id")

    def verifier(self, verify: SignatureVerifier) -> SignatureVerifier:
        """`verify`, followed, when the signature is good, by spending one of the signer's tokens."""
        if not self.enabled:
            return verify

        def verify_and_admit(envelope: Envelope, public_key: bytes) -> bool:
            if not verify(envelope, public_key):
                return False
            self.admit(envelope.signer)
            return True

        return verify_and_admit
