"""OutboxHandOff: when a new message is written leased for this process's loop, and when it is left to the claim."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.domain.outbox import DeliverTransfer, OutboxMessage
from gateway.usecases.handoff import OutboxHandOff
from gateway.usecases.outbox_ports import OutboxWork

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
WORK = OutboxWork(OutboxMessage(1, "620000", DeliverTransfer(), "dlv:t", "t", 1, NOW), "127.0.0.1:1",
                  True, None, None)


def test_no_loop_attached_leaves_every_message_to_the_claim() -> None:
    handoff = OutboxHandOff()
    assert handoff.lease_until(NOW, "620000") is None
    handoff.give(WORK)  # nobody to give it to: a no-op, not an error


def test_an_attached_loop_with_room_gets_its_messages_leased_for_its_lease() -> None:
    taken: list[OutboxWork] = []
    handoff = OutboxHandOff()
    handoff.attach(taken.append, lambda destination: True, timedelta(seconds=30))
    assert handoff.lease_until(NOW, "620000") == NOW + timedelta(seconds=30)
    handoff.give(WORK)
    assert taken == [WORK]


def test_a_full_queue_leaves_new_messages_to_the_claim() -> None:
    room = [True]
    handoff = OutboxHandOff()
    handoff.attach(lambda work: None, lambda destination: room[0], timedelta(seconds=30))
    room[0] = False
    assert handoff.lease_until(NOW, "620000") is None
    room[0] = True
    assert handoff.lease_until(NOW, "620000") is not None


def test_a_detached_loop_gets_nothing_more() -> None:
    taken: list[OutboxWork] = []
    handoff = OutboxHandOff()
    handoff.attach(taken.append, lambda destination: True, timedelta(seconds=30))
    handoff.detach()
    assert handoff.lease_until(NOW, "620000") is None
    handoff.give(WORK)  # committed leased just before the stop: its lease runs out and the claim sends it
    assert taken == []
