"""The rules that count, on the use cases themselves: the daily limit (D12) and the authorised amount (D10)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.errors import FailedPrecondition
from gateway.domain.policy import beijing_day
from gateway.domain.provinces import Policy
from gateway.domain.transfers import TransferState
from tests.fakes import OPEN_POLICY, Ring

DELIVERY_DEADLINE_SECONDS = 600  # the national default (D13)
EXPIRES_IN = timedelta(hours=1)  # transfers that are to be returned expire the same Beijing day
FAILED = (TransferState.DECLINED, TransferState.REJECTED, TransferState.RETURNED)


def limited(daily_transfer_limit: int) -> Policy:
    return Policy(blackout_start_minute=0, blackout_end_minute=0, daily_transfer_limit=daily_transfer_limit)


def refused(call: Callable[[], object]) -> str:
    with pytest.raises(FailedPrecondition) as raised:
        call()
    return raised.value.reason


# Each way a transfer fails after it was accepted; each must give back what it counted against.
def decline(ring: Ring, transfer_id: str) -> None:
    ring.answer_delivery(transfer_id)
    ring.confirm(transfer_id, decline=True)
    assert ring.state(transfer_id) is TransferState.DECLINED


def reject(ring: Ring, transfer_id: str) -> None:
    ring.answer_delivery(transfer_id, rejected=True)
    assert ring.state(transfer_id) is TransferState.REJECTED


def leave_undelivered(ring: Ring, transfer_id: str) -> None:
    ring.clock.advance(DELIVERY_DEADLINE_SECONDS)
    ring.sweep()
    assert ring.transfer(transfer_id).reason == "DESTINATION_UNREACHABLE"


def leave_unconfirmed(ring: Ring, transfer_id: str) -> None:
    ring.answer_delivery(transfer_id)
    ring.clock.advance(EXPIRES_IN.total_seconds())
    ring.sweep()
    assert ring.state(transfer_id) is TransferState.RETURNED


FAILURES = [decline, reject, leave_undelivered, leave_unconfirmed]
FAILURE_IDS = ["declined", "rejected", "undeliverable", "returned"]


def credit(ring: Ring, transfer_id: str) -> None:
    ring.answer_delivery(transfer_id)
    ring.confirm(transfer_id)


def test_the_daily_limit_is_reached_exactly_and_a_refusal_counts_nothing() -> None:
    ring = Ring(limited(3))
    binding = ring.bind()
    accepted = [ring.submit(1_000, binding) for _ in range(3)]  # the third is the last of the day
    assert [ring.state(t) for t in accepted] == [TransferState.RECEIVED] * 3
    for _ in range(2):  # refused, and refused again: the refusal took no place
        assert refused(lambda: ring.submit(1_000, binding)) == "DAILY_LIMIT_REACHED"
    credit(ring, accepted[0])  # it keeps its place
    assert refused(lambda: ring.submit(1_000, binding)) == "DAILY_LIMIT_REACHED"
    decline(ring, accepted[1])  # its place is the one free place: the refusals above took none
    ring.submit(1_000, binding)
    assert refused(lambda: ring.submit(1_000, binding)) == "DAILY_LIMIT_REACHED"


def test_the_next_beijing_day_counts_afresh() -> None:
    ring = Ring(limited(1))
    binding = ring.bind()
    ring.submit(1_000, binding)
    assert refused(lambda: ring.submit(1_000, binding)) == "DAILY_LIMIT_REACHED"
    ring.clock.advance(timedelta(days=1).total_seconds())
    ring.submit(1_000, binding)


@pytest.mark.parametrize("fail", FAILURES, ids=FAILURE_IDS)
def test_a_failed_transfer_gives_its_place_of_the_day_back(fail: Callable[[Ring, str], None]) -> None:
    ring = Ring(limited(2))
    binding = ring.bind()
    credit(ring, ring.submit(1_000, binding))  # committed: it keeps its place whatever happens next
    failing = ring.submit(1_000, binding, expires_in=EXPIRES_IN)
    assert refused(lambda: ring.submit(1_000, binding)) == "DAILY_LIMIT_REACHED"
    fail(ring, failing)
    assert beijing_day(ring.clock.now()) == beijing_day(ring.transfer(failing).created_at)  # still that day
    ring.submit(1_000, binding)  # the place it gave back
    assert refused(lambda: ring.submit(1_000, binding)) == "DAILY_LIMIT_REACHED"


def test_the_authorised_amount_is_reached_exactly_and_a_refusal_adds_nothing() -> None:
    ring = Ring(OPEN_POLICY)
    binding = ring.bind(authorised_amount_fen=100_000)
    ring.submit(60_000, binding)
    assert refused(lambda: ring.submit(40_001, binding)) == "AUTHORISED_AMOUNT_EXCEEDED"
    assert ring.used_amount(binding) == 60_000
    last = ring.submit(40_000, binding)  # exactly the authorised amount
    assert ring.used_amount(binding) == 100_000
    assert refused(lambda: ring.submit(1, binding)) == "AUTHORISED_AMOUNT_EXCEEDED"
    credit(ring, last)  # it stays counted
    assert ring.used_amount(binding) == 100_000
    assert refused(lambda: ring.submit(1, binding)) == "AUTHORISED_AMOUNT_EXCEEDED"


@pytest.mark.parametrize("fail", FAILURES, ids=FAILURE_IDS)
def test_a_failed_transfer_gives_its_amount_back(fail: Callable[[Ring, str], None]) -> None:
    ring = Ring(OPEN_POLICY)
    binding = ring.bind(authorised_amount_fen=100_000)
    credit(ring, ring.submit(30_000, binding))
    failing = ring.submit(70_000, binding, expires_in=EXPIRES_IN)
    assert refused(lambda: ring.submit(1, binding)) == "AUTHORISED_AMOUNT_EXCEEDED"
    fail(ring, failing)
    assert ring.used_amount(binding) == 30_000
    ring.submit(70_000, binding)  # the amount it gave back, to the fen
    assert refused(lambda: ring.submit(1, binding)) == "AUTHORISED_AMOUNT_EXCEEDED"


def test_a_final_transfer_gives_nothing_back_twice() -> None:
    # A declined transfer declined again, or confirmed after all, is refused and changes no count.
    ring = Ring(limited(1))
    binding = ring.bind(authorised_amount_fen=50_000)
    transfer_id = ring.submit(50_000, binding)
    decline(ring, transfer_id)
    assert ring.used_amount(binding) == 0
    assert refused(lambda: ring.confirm(transfer_id, decline=True)) == "TRANSFER_ALREADY_FINAL"
    assert refused(lambda: ring.confirm(transfer_id)) == "TRANSFER_ALREADY_FINAL"
    assert ring.used_amount(binding) == 0
    ring.submit(50_000, binding)
    assert ring.used_amount(binding) == 50_000
    assert refused(lambda: ring.submit(1, binding)) == "DAILY_LIMIT_REACHED"


# -- the same, as a property: any sequence of submissions and outcomes, against a model of what counts ------

LIVE = (TransferState.RECEIVED, TransferState.DELIVERED)


@dataclass
class Counted:
    """What counts, said simply: every transfer not failed counts its amount against the binding and a place
    in its Beijing day; a submission is accepted when its day has a place left and the amount fits."""

    daily_limit: int
    authorised: int  # 0: no cap
    transfers: dict[str, tuple[int, date, TransferState]] = field(default_factory=dict)

    def used(self) -> int:
        return sum(amount for amount, _, state in self.transfers.values() if state not in FAILED)

    def places_taken(self, day: date) -> int:
        return sum(1 for _, on, state in self.transfers.values() if on == day and state not in FAILED)

    def accepts(self, amount: int, day: date) -> bool:
        fits = self.authorised == 0 or self.used() + amount <= self.authorised
        return self.places_taken(day) < self.daily_limit and fits

    def move(self, transfer_id: str, state: TransferState) -> None:
        amount, day, _ = self.transfers[transfer_id]
        self.transfers[transfer_id] = (amount, day, state)


AMOUNTS = st.one_of(st.sampled_from([25_000, 50_000, 100_000]), st.integers(1, 120_000))
# What happens next, drawn evenly: a submission (of the amount drawn), an outcome for one of the transfers so far
# (the value picks which), or the time passing every deadline.
ACTIONS = ("submit", "submit", "deliver", "deliver", "reject", "credit", "decline", "time passes")
STEPS = st.lists(st.tuples(st.sampled_from(ACTIONS), AMOUNTS), min_size=3, max_size=30)


def _step(ring: Ring, model: Counted, binding: str, action: str, value: int) -> None:
    ids = list(model.transfers)
    if action == "submit":
        day = beijing_day(ring.clock.now())
        if model.accepts(value, day):
            model.transfers[ring.submit(value, binding, expires_in=EXPIRES_IN)] = (value, day, TransferState.RECEIVED)
        else:
            assert refused(lambda: ring.submit(value, binding)) in ("DAILY_LIMIT_REACHED", "AUTHORISED_AMOUNT_EXCEEDED")
        return
    if action == "time passes":  # past every deadline: the undelivered are rejected, the unconfirmed returned
        ring.clock.advance(EXPIRES_IN.total_seconds() + 1)
        ring.sweep()
        for transfer_id, (_, _, state) in list(model.transfers.items()):
            if state in LIVE:
                model.move(transfer_id, TransferState.REJECTED if state is TransferState.RECEIVED
                           else TransferState.RETURNED)
        return
    if not ids:
        return
    transfer_id = ids[value % len(ids)]
    state = model.transfers[transfer_id][2]
    if action in ("deliver", "reject"):
        if state is TransferState.RECEIVED:  # otherwise no delivery is due any more
            ring.answer_delivery(transfer_id, rejected=action == "reject")
            model.move(transfer_id, TransferState.REJECTED if action == "reject" else TransferState.DELIVERED)
        return
    decided = TransferState.COMMITTED if action == "credit" else TransferState.DECLINED
    if state in LIVE:  # a confirmation may overtake the delivery's acknowledgement
        ring.confirm(transfer_id, decline=action == "decline")
        model.move(transfer_id, decided)
    else:
        assert refused(lambda: ring.confirm(transfer_id, decline=action == "decline")) == "TRANSFER_ALREADY_FINAL"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(daily_limit=st.integers(1, 4), authorised=st.sampled_from([0, 100_000, 150_000]), steps=STEPS)
def test_what_counts_matches_the_model(daily_limit: int, authorised: int, steps: list[tuple[str, int]]) -> None:
    ring = Ring(limited(daily_limit))
    binding = ring.bind(authorised_amount_fen=authorised)
    model = Counted(daily_limit, authorised)
    for action, value in steps:
        _step(ring, model, binding, action, value)
        assert ring.used_amount(binding) == model.used()
        assert ring.states(model.transfers) == {t: s for t, (_, _, s) in model.transfers.items()}
