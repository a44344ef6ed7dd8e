"""Q2-Q8 against a model: random interleavings of grants, raises, lowers, consumptions (partial too), partial and
whole reversals, suspensions, resumptions and dissolutions give, after every step, exactly the model's figures and
refusals; conservation (Q3) holds, the running totals agree with the quotas, and the end releases once. Run in
the fakes ring (in-memory SQLite) and on the real stores (a SQLite file, PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from gateway.api.convert import decode_binding_dissolution, decode_member_change
from gateway.api.convert_quotas import decode_consumption, decode_grant, decode_reversal
from gateway.domain.errors import GongjiError
from gateway.domain.quota import QuotaBalance
from gateway.store.unit_of_work import SqlStore
from gateway.usecases.bindings import dissolve_binding, report_member_change
from gateway.usecases.monitoring import recount_totals
from gateway.usecases.quotas import consume_quota, grant_quota, reverse_consumption
from gateway.wire import timestamp
from protos.gongji.v1 import common_pb2, quotas_pb2, relations_pb2
from tests.fakes import GANSU, GIVER, MOTHER, XINJIANG, Ring

STEPS = st.lists(st.one_of(
    st.tuples(st.just("grant"), st.integers(0, 300_000)),
    st.tuples(st.just("consume"), st.integers(1, 150_000), st.booleans()),
    st.tuples(st.just("reverse"), st.integers(0, 20), st.one_of(st.just(0), st.integers(1, 150_000))),  # 0: all
    st.just(("suspend",)), st.just(("resume",)), st.just(("dissolve",)),
), max_size=30)


@dataclass
class Model:
    """What the rules say the quota holds: figures, the binding's standing, each consumption's drawn and reversed."""

    balance: QuotaBalance = field(default_factory=QuotaBalance)
    suspended: bool = False  # the receiver's settlement (D3): the binding SUSPENDED while it lasts
    ended: bool = False
    consumptions: list[list[int]] = field(default_factory=list)  # [drawn, reversed] with its settlement ref below
    refs: list[str] = field(default_factory=list)
    releases: int = 0
    has_quota: bool = False  # granted once (even 0): a binding never granted one has nothing to release

    def grant(self, quota_fen: int) -> str:
        b = self.balance
        if self.ended or self.suspended:
            return "BINDING_NOT_ACTIVE"
        self.has_quota = True
        difference = quota_fen - (b.granted_fen - b.released_fen)
        if difference >= 0:
            self.balance = QuotaBalance(b.granted_fen + difference, b.consumed_fen, b.released_fen)
        elif -difference > b.available_fen:
            return "QUOTA_BELOW_CONSUMED"
        else:
            self.balance = QuotaBalance(b.granted_fen, b.consumed_fen, b.released_fen - difference)
        return ""

    def consume(self, amount: int, partial: bool, ref: str) -> str:
        b = self.balance
        if self.suspended:
            return "SETTLEMENT_SUSPENDED"
        if self.ended:
            return "BINDING_NOT_ACTIVE"
        drawn = amount if amount <= b.available_fen else b.available_fen if partial else 0
        if drawn == 0:
            return "QUOTA_EXCEEDED"
        self.balance = QuotaBalance(b.granted_fen, b.consumed_fen + drawn, b.released_fen)
        self.consumptions.append([drawn, 0])
        self.refs.append(ref)
        return ""

    def reverse(self, index: int, amount: int) -> str:
        drawn, reversed_fen = self.consumptions[index]
        if amount > drawn - reversed_fen:
            return "REVERSAL_EXCEEDS_DRAWN"
        self.consumptions[index][1] += amount
        b = self.balance
        self.balance = QuotaBalance(b.granted_fen, b.consumed_fen - amount, b.released_fen + (amount if self.ended
                                                                                             else 0))
        return ""

    def dissolve(self) -> str:
        if self.ended:
            return "BINDING_NOT_ACTIVE"
        b = self.balance
        self.ended = True
        self.balance = QuotaBalance(b.granted_fen, b.consumed_fen, b.released_fen + b.available_fen)
        self.releases += self.has_quota
        return ""


class QuotaCalls:
    """The quota regime's use cases on a ring's context, with messages signed as the provinces' platforms would."""

    def __init__(self, ring: Ring) -> None:
        self.ring = ring

    def _header(self, prefix: str, sender: str) -> common_pb2.Header:
        return self.ring.header(self.ring.new_id(prefix), sender, "gateway")

    def outcome(self, call: object) -> str:
        try:
            call()  # type: ignore[operator]
        except GongjiError as error:
            return error.reason
        return ""

    def grant(self, binding_id: str, quota_fen: int) -> str:
        message = quotas_pb2.QuotaGrant(header=self._header("g", XINJIANG), binding_id=binding_id,
                                        giver=common_pb2.PersonRef(id_number=GIVER.id_number,
                                                                   pooling_area=GIVER.pooling_area),
                                        quota_fen=quota_fen, freeze_ref="frz-1")
        return self.outcome(lambda: grant_quota(self.ring.ctx, self.ring.sign(message, XINJIANG), None, decode_grant))

    def consume(self, binding_id: str, amount: int, partial: bool, ref: str) -> str:
        message = quotas_pb2.QuotaConsumption(
            header=self._header("c", GANSU), binding_id=binding_id,
            receiver=common_pb2.PersonRef(id_number=MOTHER.id_number, pooling_area=MOTHER.pooling_area),
            amount_fen=amount, allow_partial=partial, kind=quotas_pb2.CONSUMPTION_KIND_MEDICAL, settlement_ref=ref,
            care_pooling_area=MOTHER.pooling_area)
        return self.outcome(lambda: consume_quota(self.ring.ctx, self.ring.sign(message, GANSU), None,
                                                  decode_consumption))

    def reverse(self, binding_id: str, ref: str, amount: int) -> str:
        message = quotas_pb2.ConsumptionReversal(header=self._header("r", GANSU), binding_id=binding_id,
                                                 settlement_ref=ref, amount_fen=amount, reason="DRUG_RETURNED")
        return self.outcome(lambda: reverse_consumption(self.ring.ctx, self.ring.sign(message, GANSU), None,
                                                        decode_reversal))

    def member(self, kind: int) -> str:
        message = relations_pb2.MemberChange(
            header=self._header("mc", GANSU),
            person=common_pb2.PersonRef(id_number=MOTHER.id_number, pooling_area=MOTHER.pooling_area), kind=kind,
            effective_at=timestamp(self.ring.clock.now()))
        return self.outcome(lambda: report_member_change(self.ring.ctx, self.ring.sign(message, GANSU), None,
                                                         decode_member_change))

    def dissolve(self, binding_id: str) -> str:
        message = relations_pb2.BindingDissolution(header=self._header("d", XINJIANG), binding_id=binding_id,
                                                   reason="MEMBER_REQUEST")
        return self.outcome(lambda: dissolve_binding(self.ring.ctx, self.ring.sign(message, XINJIANG), None,
                                                     decode_binding_dissolution))


def check_against_model(ring: Ring, steps: list[tuple[object, ...]]) -> None:
    calls, model = QuotaCalls(ring), Model()
    binding_id = ring.bind()
    try:
        for step in steps:
            ring.clock.advance(1)
            kind = step[0]
            if kind == "grant":
                expected, got = model.grant(int(step[1])), calls.grant(binding_id, int(step[1]))  # type: ignore[call-overload]
            elif kind == "consume":
                ref = ring.new_id("stl")
                expected = model.consume(int(step[1]), bool(step[2]), ref)  # type: ignore[call-overload]
                got = calls.consume(binding_id, int(step[1]), bool(step[2]), ref)  # type: ignore[call-overload]
            elif kind == "reverse":
                if not model.consumptions:
                    continue
                index = int(step[1]) % len(model.consumptions)  # type: ignore[call-overload]
                drawn, reversed_fen = model.consumptions[index]
                amount = int(step[2]) or (drawn - reversed_fen) or 1  # type: ignore[call-overload]
                expected, got = model.reverse(index, amount), calls.reverse(binding_id, model.refs[index], amount)
            elif kind == "suspend":
                model.suspended, expected = True, ""
                got = calls.member(relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED)
            elif kind == "resume":
                model.suspended, expected = False, ""
                got = calls.member(relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_RESUMED)
            else:
                expected, got = model.dissolve(), calls.dissolve(binding_id)
            note(f"{step} -> {got or 'OK'}; model {model.balance}")
            assert got == expected, step
            with ring.ctx.uow() as uow:
                quota = uow.quotas.get(binding_id)
                consumptions = uow.quotas.consumptions(binding_id, None, 1_000)
                events = [uow.quotas.event(binding_id, v) for v in range(1, (quota.version if quota else 0) + 1)]
            stored = quota.balance if quota is not None else QuotaBalance()
            assert stored == model.balance and stored.conserved
            assert [[c.drawn_fen, c.reversed_fen] for c in reversed(consumptions)] == model.consumptions
            assert sum(1 for e in events if e is not None and e.change.value == "RELEASED") == model.releases
            assert recount_totals(ring.ctx.uow) == []
    finally:
        calls.member(relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_RESUMED)  # the next example's mother is not


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(steps=STEPS)
def test_the_fakes_ring_follows_the_model(steps: list[tuple[object, ...]]) -> None:
    check_against_model(Ring(), steps)


@pytest.fixture
def real_ring(store: SqlStore) -> Ring:
    return Ring(store=store)


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_the_real_stores_follow_the_model(real_ring: Ring, steps: list[tuple[object, ...]]) -> None:
    real_ring.clock.advance(timedelta(minutes=1).total_seconds())
    check_against_model(real_ring, steps)
