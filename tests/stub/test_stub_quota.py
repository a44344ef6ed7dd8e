"""The stub province's side of the quota regime: its ledger on its own, then the stub against a fake Quotas.

The giver's province freezes before it grants and moves the freeze as it is told; the receiver's province pays
bills from the person's own account first. Each notice counts once however often it is told.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import common_pb2, province_pb2, quotas_pb2, quotas_pb2_grpc
from province_stub.quota_ledger import InsufficientBalance, QuotaLedger
from tests.stub.test_stub_unit import (
    GANSU,
    MOTHER,
    World,
    gateway_receipt,
    header,
    reason_of,
    run_against_gateway,
)

GIVER = "620103198203040034"  # seeded in Gansu with 2,000.00 yuan on the personal account
GRANTED = province_pb2.QUOTA_CHANGE_GRANTED
LOWERED = province_pb2.QUOTA_CHANGE_LOWERED
CONSUMED = province_pb2.QUOTA_CHANGE_CONSUMED
REVERSED = province_pb2.QUOTA_CHANGE_REVERSED
RELEASED = province_pb2.QUOTA_CHANGE_RELEASED


def quota_notice(message_id: str, binding_id: str, change: int, amount_fen: int, released_fen: int = 0,
                 receiver: str = GANSU) -> province_pb2.QuotaNotice:
    return province_pb2.QuotaNotice(header=header(message_id, "gateway", receiver), binding_id=binding_id,
                                    change=change, amount_fen=amount_fen, released_fen=released_fen)


def consumption_notice(message_id: str, binding_id: str, change: int, amount_fen: int, released_fen: int = 0,
                       receiver: str = GANSU) -> province_pb2.ConsumptionNotice:
    return province_pb2.ConsumptionNotice(
        header=header(message_id, "gateway", receiver), change=change, amount_fen=amount_fen,
        released_fen=released_fen, clearing_window_id="Q2026-03",
        consumption=quotas_pb2.ConsumptionRecord(consumption_id=f"c-{message_id}", binding_id=binding_id))


def figures(ledger: QuotaLedger, id_number: str = GIVER, binding_id: str = "b1") -> tuple[int, ...]:
    """(balance, frozen, debited) of the account, then (frozen, debited, released) for the binding."""
    account, given = ledger.account(id_number), ledger.given[binding_id]
    return (account.balance_fen, account.frozen_fen, account.debited_fen,
            given.frozen_fen, given.debited_fen, given.released_fen)


# --- the ledger on its own ---


def giver_ledger(balance_fen: int = 500_000) -> QuotaLedger:
    ledger = QuotaLedger()
    ledger.set_balance(GIVER, balance_fen)
    return ledger


def test_the_hami_story_moves_freeze_debit_and_release_as_the_gateway_counts_them() -> None:
    ledger = giver_ledger()
    assert ledger.freeze_for_grant("g1", "b1", GIVER, 100_000).amount_fen == 100_000
    assert figures(ledger) == (500_000, 100_000, 0, 100_000, 0, 0)
    assert ledger.record_consumption_notice(consumption_notice("cn1", "b1", CONSUMED, 18_000), 0.0)
    assert figures(ledger) == (482_000, 82_000, 18_000, 82_000, 18_000, 0)
    ledger.record_consumption_notice(consumption_notice("cr1", "b1", REVERSED, 5_000), 0.0)
    assert figures(ledger) == (487_000, 87_000, 13_000, 87_000, 13_000, 0)
    ledger.record_quota_notice(quota_notice("qn1", "b1", RELEASED, 87_000, released_fen=87_000), 0.0)
    # The gateway's figures: granted 1,000.00, consumed 130.00, released 870.00, available 0.
    assert figures(ledger) == (487_000, 0, 13_000, 0, 13_000, 87_000)
    assert ledger.account(GIVER).available_fen == 487_000


def test_a_reversal_after_the_binding_ended_goes_back_to_the_balance_unfrozen() -> None:
    ledger = giver_ledger()
    ledger.freeze_for_grant("g1", "b1", GIVER, 10_000)
    ledger.record_consumption_notice(consumption_notice("cn1", "b1", CONSUMED, 4_000), 0.0)
    ledger.record_quota_notice(quota_notice("qn1", "b1", RELEASED, 6_000, released_fen=6_000), 0.0)
    ledger.record_consumption_notice(consumption_notice("cr1", "b1", REVERSED, 1_000, released_fen=1_000), 0.0)
    # Told to the giver too, a reversal's release counts from the consumption notice only: not unfrozen twice.
    ledger.record_quota_notice(quota_notice("qn2", "b1", REVERSED, 1_000, released_fen=1_000), 0.0)
    assert figures(ledger) == (497_000, 0, 3_000, 0, 3_000, 7_000)


def test_a_lowering_freezes_nothing_and_its_release_notice_unfreezes() -> None:
    ledger = giver_ledger()
    ledger.freeze_for_grant("g1", "b1", GIVER, 30_000)
    assert ledger.freeze_for_grant("g2", "b1", GIVER, 10_000).amount_fen == 0
    assert figures(ledger) == (500_000, 30_000, 0, 30_000, 0, 0)
    ledger.record_quota_notice(quota_notice("qn1", "b1", LOWERED, 20_000, released_fen=20_000), 0.0)
    assert figures(ledger) == (500_000, 10_000, 0, 10_000, 0, 20_000)
    # Raising again grants the difference from what the quota is now (10,000), not from the first grant.
    assert ledger.freeze_for_grant("g3", "b1", GIVER, 25_000).amount_fen == 15_000


def test_every_notice_told_twice_counts_once() -> None:
    ledger = giver_ledger()
    ledger.freeze_for_grant("g1", "b1", GIVER, 100_000)
    told = [consumption_notice("cn1", "b1", CONSUMED, 18_000), consumption_notice("cr1", "b1", REVERSED, 5_000)]
    release = quota_notice("qn1", "b1", RELEASED, 87_000, released_fen=87_000)
    for notice in told:
        assert ledger.record_consumption_notice(notice, 0.0)
    assert ledger.record_quota_notice(release, 0.0)
    once = figures(ledger)
    for notice in told:
        assert not ledger.record_consumption_notice(notice, 1.0)
    assert not ledger.record_quota_notice(release, 1.0)
    assert figures(ledger) == once
    assert [n.times_received for n in ledger.consumption_notices.values()] == [2, 2]
    assert ledger.quota_notices["qn1"].times_received == 2


def test_a_freeze_larger_than_the_unfrozen_balance_is_refused_and_freezes_nothing() -> None:
    ledger = giver_ledger(50_000)
    ledger.freeze_for_grant("g1", "b1", GIVER, 30_000)
    with pytest.raises(InsufficientBalance):
        ledger.freeze_for_grant("g2", "b2", GIVER, 20_001)
    assert (ledger.account(GIVER).frozen_fen, "b2" in ledger.given, "g2" in ledger.freezes) == (30_000, False, False)
    assert ledger.freeze_for_grant("g3", "b2", GIVER, 20_000).amount_fen == 20_000


def test_the_same_grant_again_freezes_once_and_an_undone_one_freezes_anew() -> None:
    ledger = giver_ledger()
    ledger.freeze_for_grant("g1", "b1", GIVER, 10_000)
    ledger.freeze_for_grant("g1", "b1", GIVER, 10_000)
    assert ledger.account(GIVER).frozen_fen == 10_000
    ledger.undo_freeze("g1")
    ledger.undo_freeze("g1")
    assert figures(ledger)[:2] == (500_000, 0)
    ledger.freeze_for_grant("g1", "b1", GIVER, 10_000)
    assert figures(ledger)[:2] == (500_000, 10_000)


def test_a_notice_about_a_binding_not_granted_here_is_kept_and_moves_no_account() -> None:
    ledger = giver_ledger()
    ledger.record_quota_notice(quota_notice("qn1", "other", RELEASED, 1_000, released_fen=1_000), 0.0)
    ledger.record_consumption_notice(consumption_notice("cn1", "other", CONSUMED, 1_000), 0.0)
    assert (len(ledger.quota_notices), len(ledger.consumption_notices), ledger.given) == (1, 1, {})
    assert (ledger.account(GIVER).balance_fen, ledger.account(GIVER).frozen_fen) == (500_000, 0)


def test_a_bill_is_paid_from_the_own_account_first() -> None:
    ledger = QuotaLedger()
    ledger.set_balance(MOTHER, 12_000)
    bill = ledger.pay_own_account_first("s1", MOTHER, "b1", 30_000)
    assert (bill.own_account_fen, ledger.account(MOTHER).balance_fen, bill.owed_fen) == (12_000, 0, 18_000)
    small = ledger.pay_own_account_first("s2", MOTHER, "b1", 500)
    assert (small.own_account_fen, small.owed_fen) == (0, 500)
    ledger.set_balance(MOTHER, 900)
    skipped = ledger.pay_own_account_first("s3", MOTHER, "b1", 500, skip_own_account=True)
    assert (skipped.own_account_fen, ledger.account(MOTHER).balance_fen) == (0, 900)


def test_a_balance_cannot_be_set_below_what_is_frozen() -> None:
    ledger = giver_ledger()
    ledger.freeze_for_grant("g1", "b1", GIVER, 10_000)
    with pytest.raises(ValueError):
        ledger.set_balance(GIVER, 9_999)


# --- the stub against a fake gongji.v1.Quotas ---


def refusal(code: grpc.StatusCode, reason: str) -> tuple[tuple[str, bytes], ...]:
    info = error_details_pb2.ErrorInfo(reason=reason, domain="gongji.v1")
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=reason, details=[detail])
    return tuple(rpc_status.to_status(status).trailing_metadata)


class FakeQuotas(quotas_pb2_grpc.QuotasServicer):
    """Answers like the gateway (signed receipts), keeps what it was sent, refuses grants when told to."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.grants: list[quotas_pb2.QuotaGrant] = []
        self.consumptions: list[quotas_pb2.QuotaConsumption] = []
        self.reversals: list[quotas_pb2.ConsumptionReversal] = []
        self.refuse_grants = ""
        self.available_fen = 0

    def figures(self) -> common_pb2.QuotaFigures:
        return common_pb2.QuotaFigures(granted_fen=self.available_fen, available_fen=self.available_fen)

    async def GrantQuota(self, request: Any, context: Any) -> Any:
        grant = quotas_pb2.QuotaGrant.FromString(request.grant.payload)
        self.grants.append(grant)
        if self.refuse_grants:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no",
                                refusal(grpc.StatusCode.FAILED_PRECONDITION, self.refuse_grants))
        self.available_fen = grant.quota_fen
        return quotas_pb2.GrantQuotaResponse(receipt=gateway_receipt(self.world, request.grant, "ACTIVE"),
                                             quota=self.figures())

    async def ConsumeQuota(self, request: Any, context: Any) -> Any:
        consumption = quotas_pb2.QuotaConsumption.FromString(request.consumption.payload)
        self.consumptions.append(consumption)
        if consumption.own_account_balance_fen > 0:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no",
                                refusal(grpc.StatusCode.FAILED_PRECONDITION, "OWN_ACCOUNT_NOT_FIRST"))
        drawn = min(consumption.amount_fen, self.available_fen)
        self.available_fen -= drawn
        return quotas_pb2.ConsumeQuotaResponse(receipt=gateway_receipt(self.world, request.consumption, "DRAWN"),
                                               drawn_fen=drawn, quota=self.figures(), clearing_window_id="Q2026-03")

    async def ReverseConsumption(self, request: Any, context: Any) -> Any:
        reversal = quotas_pb2.ConsumptionReversal.FromString(request.reversal.payload)
        self.reversals.append(reversal)
        return quotas_pb2.ReverseConsumptionResponse(
            receipt=gateway_receipt(self.world, request.reversal, "PARTLY_REVERSED"),
            consumption=quotas_pb2.ConsumptionRecord(settlement_ref=reversal.settlement_ref,
                                                     reversed_fen=reversal.amount_fen))

    def serve(self, server: grpc.aio.Server) -> None:
        quotas_pb2_grpc.add_QuotasServicer_to_server(self, server)


async def given(control: Any, binding_id: str = "b1") -> tuple[int, ...]:
    ledger = await control.Ledger(control_pb2.LedgerRequest())
    account = next(a for a in ledger.accounts if a.id_number == GIVER)
    quota = next((g for g in ledger.given if g.binding_id == binding_id), control_pb2.GivenQuotaView())
    return (account.balance_fen, account.frozen_fen, account.debited_fen, quota.frozen_fen, quota.debited_fen,
            quota.released_fen)


def test_the_giver_stub_freezes_before_it_grants_and_never_sends_a_grant_it_cannot_cover(tmp_path: Path) -> None:
    world = World(tmp_path / "keys")
    fake = FakeQuotas(world)

    async def scenario(inbox: Any, control: Any, world_: World) -> None:
        too_much = await control.GrantQuota(control_pb2.StubGrantRequest(
            binding_id="b1", giver_id_number=GIVER, quota_fen=200_001))
        assert (too_much.code, too_much.reason, too_much.sent_to_gateway) == (
            "FAILED_PRECONDITION", "INSUFFICIENT_BALANCE", False)
        assert fake.grants == []
        fake.refuse_grants = "QUOTA_NOT_ALLOWED"
        refused = await control.GrantQuota(control_pb2.StubGrantRequest(
            binding_id="b1", giver_id_number=GIVER, quota_fen=100_000))
        assert (refused.code, refused.reason, refused.frozen_fen) == ("FAILED_PRECONDITION", "QUOTA_NOT_ALLOWED", 0)
        assert await given(control) == (200_000, 0, 0, 0, 0, 0)
        fake.refuse_grants = ""
        granted = await control.GrantQuota(control_pb2.StubGrantRequest(
            binding_id="b1", giver_id_number=GIVER, quota_fen=100_000))
        assert (granted.code, granted.frozen_fen, granted.quota.available_fen, granted.receipt_verified) == (
            "OK", 100_000, 100_000, True)
        sent = fake.grants[-1]
        assert (sent.header.sender, sent.binding_id, sent.giver.id_number, sent.quota_fen) == (
            GANSU, "b1", GIVER, 100_000)
        assert sent.freeze_ref and len(sent.freeze_ref) <= 64
        assert await given(control) == (200_000, 100_000, 0, 100_000, 0, 0)

    run_against_gateway(world, scenario, fake.serve)


def test_notices_move_the_freeze_once_and_refused_notices_count_nothing(tmp_path: Path) -> None:
    world = World(tmp_path / "keys")
    fake = FakeQuotas(world)

    def request(notice: Any) -> Any:
        if isinstance(notice, province_pb2.QuotaNotice):
            return province_pb2.NotifyQuotaRequest(
                notice=world.gateway_sign("gongji.v1.QuotaNotice", notice.SerializeToString()))
        return province_pb2.NotifyConsumptionRequest(
            notice=world.gateway_sign("gongji.v1.ConsumptionNotice", notice.SerializeToString()))

    async def scenario(inbox: Any, control: Any, world_: World) -> None:
        await control.GrantQuota(control_pb2.StubGrantRequest(binding_id="b1", giver_id_number=GIVER,
                                                              quota_fen=100_000))
        # Two notices refused on purpose: UNAVAILABLE, nothing kept; the gateway's retries then count once.
        await control.Configure(control_pb2.Behaviour(fail_next_quota_notices=2))
        consumed = request(consumption_notice("cn1", "b1", CONSUMED, 18_000))
        released = request(quota_notice("qn1", "b1", RELEASED, 82_000, released_fen=82_000))
        for attempt in (inbox.NotifyConsumption(consumed), inbox.NotifyQuota(released)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await attempt
            assert (refused.value.code(), reason_of(refused.value)) == (grpc.StatusCode.UNAVAILABLE,
                                                                        "FAILURE_INJECTED")
        assert await given(control) == (200_000, 100_000, 0, 100_000, 0, 0)
        for _ in range(2):
            await inbox.NotifyConsumption(consumed)
            await inbox.NotifyQuota(released)
        assert await given(control) == (182_000, 0, 18_000, 0, 18_000, 82_000)
        ledger = await control.Ledger(control_pb2.LedgerRequest())
        assert ledger.notices_failed == 2
        assert [(n.message_id, n.change, n.amount_fen, n.times_received) for n in ledger.consumption_notices] == [
            ("cn1", CONSUMED, 18_000, 2)]
        assert [(n.message_id, n.released_fen, n.times_received) for n in ledger.quota_notices] == [
            ("qn1", 82_000, 2)]
        # Refused until told otherwise.
        await control.Configure(control_pb2.Behaviour(refuse_quota_notices=True))
        with pytest.raises(grpc.aio.AioRpcError):
            await inbox.NotifyQuota(request(quota_notice("qn2", "b1", GRANTED, 1)))
        assert len((await control.Ledger(control_pb2.LedgerRequest())).quota_notices) == 1

    run_against_gateway(world, scenario, fake.serve)


def test_the_receiver_stub_settles_a_bill_own_account_first_then_draws_and_reverses(tmp_path: Path) -> None:
    world = World(tmp_path / "keys")
    fake = FakeQuotas(world)
    fake.available_fen = 100_000

    async def scenario(inbox: Any, control: Any, world_: World) -> None:
        bill = await control.SettleBill(control_pb2.SettleBillRequest(
            id_number=MOTHER, binding_id="b1", amount_fen=30_000, kind=quotas_pb2.CONSUMPTION_KIND_PHARMACY))
        assert (bill.code, bill.own_account_fen, bill.drawn_fen, bill.owed_fen, bill.quota.available_fen) == (
            "OK", 12_000, 18_000, 0, 82_000)
        sent = fake.consumptions[-1]
        assert (sent.amount_fen, sent.own_account_used_fen, sent.own_account_balance_fen, sent.settlement_ref,
                sent.receiver.id_number, sent.care_pooling_area, sent.header.message_id) == (
            18_000, 12_000, 0, bill.settlement_ref, MOTHER, "620100", bill.consumption_id)
        assert all(c.isalnum() or c in "._:-" for c in bill.settlement_ref)
        # Nothing left on her own account: the next bill is drawn whole.
        second = await control.SettleBill(control_pb2.SettleBillRequest(
            id_number=MOTHER, binding_id="b1", amount_fen=1_000, kind=quotas_pb2.CONSUMPTION_KIND_MEDICAL))
        assert (second.own_account_fen, second.drawn_fen, fake.consumptions[-1].own_account_used_fen) == (
            0, 1_000, 0)
        assert second.settlement_ref != bill.settlement_ref
        # Said truthfully when the own account is skipped: the gateway refuses, the person owes it all.
        await control.SetAccount(control_pb2.SetAccountRequest(id_number=MOTHER, balance_fen=700))
        skipped = await control.SettleBill(control_pb2.SettleBillRequest(
            id_number=MOTHER, binding_id="b1", amount_fen=1_000, kind=quotas_pb2.CONSUMPTION_KIND_MEDICAL,
            skip_own_account=True))
        assert (skipped.code, skipped.reason, skipped.owed_fen, fake.consumptions[-1].own_account_balance_fen) == (
            "FAILED_PRECONDITION", "OWN_ACCOUNT_NOT_FIRST", 1_000, 700)
        reversed_ = await control.ReverseBill(control_pb2.ReverseBillRequest(settlement_ref=bill.settlement_ref,
                                                                             amount_fen=5_000))
        assert reversed_.code == "OK"
        assert (fake.reversals[-1].binding_id, fake.reversals[-1].amount_fen, fake.reversals[-1].reason) == (
            "b1", 5_000, "DRUG_RETURNED")
        ledger = await control.Ledger(control_pb2.LedgerRequest())
        kept = next(b for b in ledger.bills if b.settlement_ref == bill.settlement_ref)
        assert (kept.own_account_fen, kept.drawn_fen, kept.reversed_fen) == (12_000, 18_000, 5_000)

    run_against_gateway(world, scenario, fake.serve)
