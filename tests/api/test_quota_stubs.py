"""The quota regime end to end over real servers: the stub provinces on both sides of the gateway.

Xinjiang's stub freezes before it grants and moves its freeze as it is told; Gansu's settles a bill own account
first and draws the rest. Once every notice has arrived, the giver's province's freeze, debit and release for
the binding are the gateway's available, consumed and released (GetQuota), however often a notice was told.
"""

from __future__ import annotations

from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import province_pb2, quotas_pb2
from tests.support import GANSU, GIVER, MOTHER, XINJIANG, Stack, wait_until

CONSUMED, REVERSED = province_pb2.QUOTA_CHANGE_CONSUMED, province_pb2.QUOTA_CHANGE_REVERSED
GRANTED, RELEASED = province_pb2.QUOTA_CHANGE_GRANTED, province_pb2.QUOTA_CHANGE_RELEASED
SON_BALANCE = 500_000  # Xinjiang's seed


def ledger(stack: Stack, province: str) -> control_pb2.LedgerResponse:
    return stack.control(province).Ledger(control_pb2.LedgerRequest(), timeout=5)


def gateway_figures(stack: Stack, binding_id: str) -> tuple[int, int, int, int]:
    quota = stack.control(XINJIANG).QueryQuota(control_pb2.QueryQuotaRequest(binding_id=binding_id),
                                               timeout=5).answer.quota
    return quota.granted_fen, quota.consumed_fen, quota.released_fen, quota.available_fen


def giver_figures(stack: Stack, binding_id: str) -> tuple[int, int, int, int]:
    """(granted, debited, released, frozen) as Xinjiang's stub holds them for the binding."""
    given = next(g for g in ledger(stack, XINJIANG).given if g.binding_id == binding_id)
    return (given.frozen_fen + given.debited_fen + given.released_fen, given.debited_fen, given.released_fen,
            given.frozen_fen)


def son_account(stack: Stack) -> tuple[int, int, int]:
    account = next(a for a in ledger(stack, XINJIANG).accounts if a.id_number == GIVER[0])
    return account.balance_fen, account.frozen_fen, account.debited_fen


def told(stack: Stack, province: str, binding_id: str) -> list[tuple[str, int, int, int]]:
    """The notices a province was told about the binding: (kind, change, amount, times received)."""
    kept = ledger(stack, province)
    return ([("quota", n.change, n.amount_fen, n.times_received) for n in kept.quota_notices
             if n.binding_id == binding_id]
            + [("consumption", n.change, n.amount_fen, n.times_received) for n in kept.consumption_notices
               if n.binding_id == binding_id])


def grant(control: control_pb2_grpc.StubControlStub, binding_id: str, quota_fen: int) -> control_pb2.StubGrantResponse:
    return control.GrantQuota(control_pb2.StubGrantRequest(binding_id=binding_id, giver_id_number=GIVER[0],
                                                           quota_fen=quota_fen), timeout=15)


def test_grant_bill_reversal_and_dissolution_leave_the_givers_freeze_equal_to_the_gateways_figures(
        stack: Stack) -> None:
    binding_id = stack.binding_id
    xinjiang, gansu = stack.control(XINJIANG), stack.control(GANSU)
    # More than his unfrozen balance: refused by his province, the gateway never hears of it.
    too_much = grant(xinjiang, binding_id, SON_BALANCE + 1)
    assert (too_much.code, too_much.reason, too_much.sent_to_gateway) == ("FAILED_PRECONDITION",
                                                                          "INSUFFICIENT_BALANCE", False)
    assert gateway_figures(stack, binding_id) == (0, 0, 0, 0)

    granted = grant(xinjiang, binding_id, 100_000)
    assert (granted.code, granted.frozen_fen, granted.receipt_verified) == ("OK", 100_000, True)
    assert son_account(stack) == (SON_BALANCE, 100_000, 0)

    gansu.SetAccount(control_pb2.SetAccountRequest(id_number=MOTHER[0], balance_fen=12_000), timeout=5)
    bill = gansu.SettleBill(control_pb2.SettleBillRequest(
        id_number=MOTHER[0], binding_id=binding_id, amount_fen=30_000, kind=quotas_pb2.CONSUMPTION_KIND_PHARMACY,
        care_pooling_area=MOTHER[1]), timeout=15)
    assert (bill.code, bill.own_account_fen, bill.drawn_fen, bill.owed_fen) == ("OK", 12_000, 18_000, 0)
    assert (bill.quota.consumed_fen, bill.quota.available_fen) == (18_000, 82_000)
    returned = gansu.ReverseBill(control_pb2.ReverseBillRequest(settlement_ref=bill.settlement_ref,
                                                                amount_fen=5_000), timeout=15)
    assert (returned.code, returned.consumption.reversed_fen, returned.quota.available_fen) == ("OK", 5_000, 87_000)
    wait_until(lambda: len(told(stack, XINJIANG, binding_id)) == 2, what="Xinjiang told the draw and the reversal")
    assert giver_figures(stack, binding_id) == gateway_figures(stack, binding_id) == (100_000, 13_000, 0, 87_000)

    dissolved = xinjiang.DissolveBinding(control_pb2.StubDissolveRequest(binding_id=binding_id,
                                                                         reason="MEMBER_REQUEST"), timeout=10)
    assert dissolved.code == "OK"
    wait_until(lambda: len(told(stack, XINJIANG, binding_id)) == 3 and len(told(stack, GANSU, binding_id)) == 4,
               what="both provinces told the release")
    assert giver_figures(stack, binding_id) == gateway_figures(stack, binding_id) == (100_000, 13_000, 87_000, 0)
    assert son_account(stack) == (SON_BALANCE - 13_000, 0, 13_000)
    # Each told once; the outbox may deliver one province's notices in any order.
    assert sorted(told(stack, XINJIANG, binding_id)) == sorted([
        ("quota", RELEASED, 87_000, 1), ("consumption", CONSUMED, 18_000, 1), ("consumption", REVERSED, 5_000, 1)])
    assert sorted(told(stack, GANSU, binding_id)) == sorted([
        ("quota", GRANTED, 100_000, 1), ("quota", CONSUMED, 18_000, 1), ("quota", REVERSED, 5_000, 1),
        ("quota", RELEASED, 87_000, 1)])


def test_notices_the_giver_refused_are_retried_and_count_once(stack: Stack) -> None:
    binding_id = stack.binding_id
    xinjiang, gansu = stack.control(XINJIANG), stack.control(GANSU)
    assert grant(xinjiang, binding_id, 50_000).code == "OK"
    stack.configure(XINJIANG, fail_next_quota_notices=2)
    gansu.SetAccount(control_pb2.SetAccountRequest(id_number=MOTHER[0], balance_fen=0), timeout=5)
    for amount in (7_000, 3_000):
        bill = gansu.SettleBill(control_pb2.SettleBillRequest(
            id_number=MOTHER[0], binding_id=binding_id, amount_fen=amount, kind=quotas_pb2.CONSUMPTION_KIND_MEDICAL),
            timeout=15)
        assert (bill.code, bill.drawn_fen) == ("OK", amount)
    wait_until(lambda: len(told(stack, XINJIANG, binding_id)) == 2, what="the refused notices told again")
    kept = ledger(stack, XINJIANG)
    assert kept.notices_failed == 2
    assert sorted(n.amount_fen for n in kept.consumption_notices if n.binding_id == binding_id) == [3_000, 7_000]
    assert all(n.times_received == 1 for n in kept.consumption_notices)
    assert giver_figures(stack, binding_id) == gateway_figures(stack, binding_id) == (50_000, 10_000, 0, 40_000)
    assert son_account(stack) == (SON_BALANCE - 10_000, 40_000, 10_000)
