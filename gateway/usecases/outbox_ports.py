"""The outbox's ports: a due message with what it takes to send it, the sender, what came of a send, the backoff."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from gateway.domain.bindings import Binding
from gateway.domain.envelope import Envelope
from gateway.domain.outbox import OutboxMessage
from gateway.domain.quota import Consumption, QuotaEvent
from gateway.domain.transfers import Transfer


@dataclass(frozen=True, slots=True)
class OutboxWork:
    """A due message with what is needed to send it."""

    message: OutboxMessage
    endpoint: str
    destination_active: bool
    transfer: Transfer | None  # for transfer messages
    instruction: Envelope | None  # the giver province's original envelope: instruction or binding proposal
    binding: Binding | None = None  # for binding messages
    figures: Envelope | None = None  # for settlement messages: the gateway-signed figures for this province
    quota_event: QuotaEvent | None = None  # for quota notices: the change told
    consumption: Consumption | None = None  # for consumption notices: the consumption drawn or reversed


@dataclass(frozen=True, slots=True)
class SendResult:
    """What came of one attempt: acknowledged (with the receiver's decision for deliveries) or failed."""

    acknowledged: bool
    rejected: bool = False
    reason: str = ""

    @classmethod
    def failed(cls, error: str) -> SendResult:
        return cls(acknowledged=False, reason=error)


class OutboxSender(Protocol):
    """Sends one message to its province (provinces/client.py); every outcome, errors too, is a SendResult."""

    async def send(self, work: OutboxWork) -> SendResult: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    base_seconds: float = 0.2
    max_seconds: float = 30.0

    def delay(self, attempts: int) -> timedelta:
        # The exponent is capped: notifications retry without end, and 2**1024 overflows a float.
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** min(max(0, attempts - 1), 60))
        # Jitter spreads the retries of many messages to one recovering province.
        return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))
