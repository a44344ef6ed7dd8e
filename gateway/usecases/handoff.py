"""Hand-off: a transfer message queued by a use case goes to this process's outbox loop at the commit.

Without it, the loop finds each new message with a claim transaction of its own (select due, lease,
re-read the transfer and the instruction, commit), about a tenth of the gateway's work per transfer.
Handed off, the message is written already leased to this process, so no other process takes it
before the lease ends, and the loop gets what the use case had in hand. If this process dies before
sending it, the lease runs out and any gateway's claim sends it, as for a claimed message; nothing
that was committed is lost. Until a loop attaches (a gateway whose outbox runs in dispatcher
processes never does), messages are queued unleased and claimed as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta

from gateway.domain.envelope import Envelope
from gateway.domain.outbox import OutboxContent
from gateway.domain.transfers import Transfer, TransferState
from gateway.usecases.outbox_ports import OutboxWork
from gateway.usecases.ports import UnitOfWork


class OutboxHandOff:
    """Where use cases hand their new messages to this process's outbox loop, once one is attached."""

    def __init__(self) -> None:
        self._take: Callable[[OutboxWork], None] | None = None
        self._has_room: Callable[[str], bool] = lambda destination: False
        self._lease = timedelta(0)

    def attach(self, take: Callable[[OutboxWork], None], has_room: Callable[[str], bool], lease: timedelta) -> None:
        """`take` queues a message for sending, from any thread; `has_room(destination)` says whether to hand off
        more of that province's messages."""
        self._has_room, self._lease = has_room, lease
        self._take = take

    def detach(self) -> None:
        self._take = None

    def lease_until(self, now: datetime, destination: str) -> datetime | None:
        """The lease a new message is written with, or None to leave it to the claim (no loop, or a long
        queue: a message must not wait in it past its lease)."""
        return now + self._lease if self._take is not None and self._has_room(destination) else None

    def give(self, work: OutboxWork) -> None:
        """After the commit. Detached meanwhile (stopping), the lease runs out and the claim sends it."""
        take = self._take
        if take is not None:
            take(work)


def enqueue_transfer_message(handoff: OutboxHandOff, uow: UnitOfWork, content: OutboxContent, destination: str,
                             message_id: str, transfer: Transfer, now: datetime,
                             instruction: Envelope | None = None) -> None:
    """Queue a delivery or an outcome; with a loop attached, leased to it and handed over at the commit.

    `transfer` is the transfer as the message is to describe it (its state after this transaction).
    """
    province = uow.provinces.get(destination)
    lease_until = None if province is None else handoff.lease_until(now, destination)
    message = uow.outbox.enqueue(destination, content, message_id, transfer.transfer_id, now, lease_until)
    if message is not None and province is not None:
        work = OutboxWork(message, province.endpoint, province.is_active, transfer, instruction)
        uow.after_commit(lambda: handoff.give(work))


def as_decided(transfer: Transfer, state: TransferState, reason: str, at: datetime) -> Transfer:
    """The transfer as its change to a final state leaves it (what the outcome message tells)."""
    return dataclasses.replace(transfer, state=state, reason=reason, updated_at=at)
