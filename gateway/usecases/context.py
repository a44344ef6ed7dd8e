"""What every use case is given: the unit of work, the clock, the receipt issuer and friends."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from gateway.domain.clock import Clock
from gateway.domain.errors import RequestInFlight
from gateway.domain.settlement import SettlementPolicy
from gateway.usecases.handoff import OutboxHandOff
from gateway.usecases.oplog import OperatorsLog
from gateway.usecases.ports import MemberDirectory, PersonHasher, ReceiptIssuer, SignatureVerifier, UnitOfWorkFactory


class InFlightRequests:
    """Keys being processed in this process: a concurrent duplicate is told to retry, never run twice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: set[tuple[str, str]] = set()

    @contextmanager
    def hold(self, sender: str, message_id: str) -> Iterator[None]:
        key = (sender, message_id)
        with self._lock:
            if key in self._keys:
                raise RequestInFlight("the same message is being processed; retry with the same message_id")
            self._keys.add(key)
        try:
            yield
        finally:
            with self._lock:
                self._keys.discard(key)


def no_limit(province: str) -> None:
    """Admits every call (no rate limit)."""


@dataclass(frozen=True, slots=True)
class StoredPayloadTypes:
    """The payload types of the signed messages the gateway keeps and reads back to send on: a province's
    instruction and proposal, its own settlement figures. The wire contract names them (the composition root
    reads them from it); the store keeps the bytes and signature only."""

    instruction: str
    proposal: str
    figures: str


@dataclass(frozen=True)
class UseCaseContext:
    uow: UnitOfWorkFactory
    clock: Clock
    receipts: ReceiptIssuer
    hasher: PersonHasher
    verify: SignatureVerifier
    # The provinces' CheckMember, for the use cases that ask them about a person (VerifyRelation, ProposeBinding).
    members: MemberDirectory
    stored_types: StoredPayloadTypes
    max_clock_skew: timedelta = timedelta(seconds=120)
    # Spends one call of the province's budget, or raises RateLimited; called once a call is proven to
    # come from that province (signature verified, signer = the TLS caller). By default: no limit.
    admit: Callable[[str], None] = no_limit
    # The same for VerifyRelation's own, smaller budget: spent on top of `admit`, once the query is proven the
    # asking province's own, so that no province can sweep another's population with it.
    admit_relation_query: Callable[[str], None] = no_limit
    in_flight: InFlightRequests = field(default_factory=InFlightRequests)
    settlement: SettlementPolicy = field(default_factory=SettlementPolicy)
    # New transfer messages go straight to this process's outbox loop once it attaches (usecases/handoff.py).
    handoff: OutboxHandOff = field(default_factory=OutboxHandOff)
    # Rate-limited warnings for operators: failing deliveries, transfers that ended REJECTED or RETURNED.
    oplog: OperatorsLog = field(default_factory=OperatorsLog)
