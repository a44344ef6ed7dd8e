"""The quota regime over real servers (Q2-Q12): grants, consumptions and reversals, each verified, idempotent and
receipted; every refusal stored and replayed; GetQuota for the binding's two provinces only; the release when a
binding ends, exactly once, whichever way it ends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from protos.gongji.v1 import common_pb2, operations_pb2, quotas_pb2, relations_pb2
from tests.api.quota_calls import (
    consume,
    consumption_message,
    figures,
    get_quota,
    grant,
    grant_message,
    quota_counts,
    quotas,
    reversal_message,
    reverse,
    rows,
    send_consumption,
    send_grant,
)
from tests.support import GANSU, GIVER, MOTHER, TEST_POLICY, XINJIANG, Stack, error_of, wait_until

SHAANXI = "610000"
CHILD = ("620102201508160027", "620100")


def refused_and_replayed(stack: Stack, send: Callable[[], Any], code: grpc.StatusCode, reason: str) -> None:
    """The call is refused with `reason`, stores nothing of the quota's, and a resend gets the stored refusal."""
    before = quota_counts(stack)
    first = error_of(send)
    assert (first.code, first.reason) == (code, reason), first.message
    assert "replay" not in first.metadata
    again = error_of(send)
    assert (again.code, again.reason, again.metadata.get("replay")) == (code, reason, "true")
    assert quota_counts(stack) == before


def test_grant_raise_lower_consume_partly_and_reverse_with_signed_receipts(stack: Stack) -> None:
    message = grant_message(stack, 100_000)
    envelope = stack.sign(message, XINJIANG)
    answer = quotas(stack).GrantQuota(quotas_pb2.GrantQuotaRequest(grant=envelope), timeout=10)
    receipt = stack.verify_receipt(answer.receipt, envelope.payload)
    assert (receipt.subject_id, receipt.state) == (stack.binding_id, "GRANTED")
    assert figures(answer.quota) == figures(receipt.quota) == (100_000, 0, 0, 100_000)
    again = quotas(stack).GrantQuota(quotas_pb2.GrantQuotaRequest(grant=envelope), timeout=10)
    assert again.replay and again.receipt == answer.receipt  # the same answer, nothing granted twice

    assert figures(grant(stack, 150_000).quota) == (150_000, 0, 0, 150_000)  # raised: 50,000 more frozen
    drawn = consume(stack, 18_000)
    assert (drawn.drawn_fen, figures(drawn.quota)) == (18_000, (150_000, 18_000, 0, 132_000))
    assert drawn.clearing_window_id.startswith("Q") and len(drawn.clearing_window_id) == 8
    lowered = grant(stack, 100_000)
    assert figures(lowered.quota) == (150_000, 18_000, 50_000, 82_000)  # unused quota released
    assert common_pb2.Receipt.FromString(lowered.receipt.payload).state == "LOWERED"

    # A partial draw takes what is left; the receipt says how much.
    bill = consumption_message(stack, 90_000, allow_partial=True)
    envelope = stack.sign(bill, GANSU)
    partial = quotas(stack).ConsumeQuota(quotas_pb2.ConsumeQuotaRequest(consumption=envelope), timeout=10)
    stated = stack.verify_receipt(partial.receipt, envelope.payload)
    assert (partial.drawn_fen, stated.drawn_fen, stated.state, stated.subject_id) == (
        82_000, 82_000, "DRAWN", bill.header.message_id)
    assert figures(partial.quota) == (150_000, 100_000, 50_000, 0)
    resent = quotas(stack).ConsumeQuota(quotas_pb2.ConsumeQuotaRequest(consumption=envelope), timeout=10)
    assert resent.replay and resent.receipt == partial.receipt and resent.drawn_fen == 82_000
    assert resent.clearing_window_id == partial.clearing_window_id

    # Reversals: partly, then the rest; never more than drawn.
    ref = bill.settlement_ref
    part = reverse(stack, ref, 2_000)
    assert (part.consumption.reversed_fen, part.consumption.state) == (2_000,
                                                                       quotas_pb2.CONSUMPTION_STATE_PARTLY_REVERSED)
    assert figures(part.quota) == (150_000, 98_000, 50_000, 2_000)
    too_much = stack.sign(reversal_message(stack, ref, 80_001), GANSU)
    refused_and_replayed(stack, lambda: quotas(stack).ReverseConsumption(
        quotas_pb2.ReverseConsumptionRequest(reversal=too_much), timeout=10),
        grpc.StatusCode.FAILED_PRECONDITION, "REVERSAL_EXCEEDS_DRAWN")
    rest = reverse(stack, ref, 80_000)
    assert rest.consumption.state == quotas_pb2.CONSUMPTION_STATE_REVERSED
    assert figures(rest.quota) == (150_000, 18_000, 50_000, 82_000)
    assert rest.clearing_window_id == partial.clearing_window_id
    unknown = error_of(lambda: reverse(stack, "no-such-ref", 1))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "CONSUMPTION_NOT_FOUND")

    # GetQuota: both provinces of the binding, consumptions newest first, a page at a time.
    first = get_quota(stack, page_size=1)
    assert figures(first.quota) == (150_000, 18_000, 50_000, 82_000)
    assert [c.consumption_id for c in first.consumptions] == [bill.header.message_id] and first.next_page_token
    second = get_quota(stack, signer=GANSU, page_size=1, page_token=first.next_page_token)
    assert [c.drawn_fen for c in second.consumptions] == [18_000] and not second.next_page_token
    assert all(c.kind == quotas_pb2.CONSUMPTION_KIND_PHARMACY for c in first.consumptions)
    # Conservation (Q3) in the store, after every change.
    for granted, consumed, released in rows(stack, "SELECT granted_fen, consumed_fen, released_fen FROM quotas"):
        assert min(granted, consumed, released, granted - consumed - released) >= 0


def test_each_refusal_of_a_consumption_is_stored_and_replayed(stack: Stack) -> None:
    grant(stack, 50_000)

    def attempt(message: quotas_pb2.QuotaConsumption, signer: str = GANSU) -> Callable[[], Any]:
        envelope = stack.sign(message, signer)
        return lambda: quotas(stack).ConsumeQuota(quotas_pb2.ConsumeQuotaRequest(consumption=envelope), timeout=10)

    precondition = grpc.StatusCode.FAILED_PRECONDITION
    refused_and_replayed(stack, attempt(consumption_message(stack, 50_001)), precondition, "QUOTA_EXCEEDED")
    refused_and_replayed(stack, attempt(consumption_message(stack, 1_000, kind=0)), precondition, "KIND_NOT_ALLOWED")
    refused_and_replayed(stack, attempt(consumption_message(stack, 1_000, own_account_balance_fen=1)), precondition,
                         "OWN_ACCOUNT_NOT_FIRST")
    refused_and_replayed(stack, attempt(consumption_message(stack, 1_000, person=CHILD)), precondition,
                         "NOT_BINDING_RECEIVER")
    taken = consume(stack, 1_000)
    assert taken.drawn_fen == 1_000
    ref = get_quota(stack).consumptions[0].settlement_ref
    refused_and_replayed(stack, attempt(consumption_message(stack, 1_000, settlement_ref=ref)), precondition,
                         "DUPLICATE_SETTLEMENT_REF")
    # Q11: the lower of the two provinces' maximums.
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=XINJIANG, policy=operations_pb2.ProvincePolicy(max_consumption_fen=10_000, blackout_start_minute=0,
                                                            blackout_end_minute=0)), timeout=5)
    refused_and_replayed(stack, attempt(consumption_message(stack, 10_001, allow_partial=True)), precondition,
                         "CONSUMPTION_OVER_MAXIMUM")
    assert consume(stack, 10_000).drawn_fen == 10_000
    # ... the receiver's province's when it is the lower one.
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=GANSU, policy=operations_pb2.ProvincePolicy(max_consumption_fen=5_000)), timeout=5)
    refused_and_replayed(stack, attempt(consumption_message(stack, 5_001)), precondition, "CONSUMPTION_OVER_MAXIMUM")
    # Q1: the receiver's province on transfers only.
    transfers_only = operations_pb2.ProvincePolicy(mutual_aid_mode=operations_pb2.MUTUAL_AID_MODE_TRANSFER,
                                                   blackout_start_minute=0, blackout_end_minute=0)
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(code=GANSU, policy=transfers_only), timeout=5)
    refused_and_replayed(stack, attempt(consumption_message(stack, 1_000)), precondition, "QUOTA_NOT_ALLOWED")
    raise_it = grant_message(stack, 60_000)
    refused_and_replayed(stack, lambda: send_grant(stack, raise_it), precondition, "QUOTA_NOT_ALLOWED")
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(code=GANSU, policy=TEST_POLICY), timeout=5)
    # D3: a suspended receiver cannot draw; the suspension releases nothing.
    stack.member_change(MOTHER, relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED)
    refused_and_replayed(stack, attempt(consumption_message(stack, 1_000)), precondition, "SETTLEMENT_SUSPENDED")
    assert figures(get_quota(stack).quota) == (50_000, 11_000, 0, 39_000)
    stack.member_change(MOTHER, relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_RESUMED)
    assert consume(stack, 1_000).drawn_fen == 1_000


def test_only_the_bindings_provinces_call_and_each_its_own_side(stack: Stack) -> None:
    grant(stack, 10_000)
    wrong_side = error_of(lambda: send_grant(stack, grant_message(stack, 20_000, sender=GANSU,
                                                                            giver=(GIVER[0], "620100")),
                                                         signer=GANSU))
    assert (wrong_side.code, wrong_side.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_GIVER_PROVINCE")
    wrong_side = error_of(lambda: send_consumption(stack, consumption_message(stack, 1_000, sender=XINJIANG,
                                                                              care_pooling_area="650500",
                                                                              person=("620102196505120026", "650500")),
                                                   signer=XINJIANG))
    assert (wrong_side.code, wrong_side.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_RECEIVER_PROVINCE")
    stack.add_province(SHAANXI, "陕西")
    for call in (lambda: get_quota(stack, signer=SHAANXI),
                 lambda: send_grant(stack, grant_message(stack, 1, sender=SHAANXI, giver=("610102199001011231",
                                                                                         "610100")),
                                    signer=SHAANXI)):
        seen = error_of(call)
        assert (seen.code, seen.reason) == (grpc.StatusCode.NOT_FOUND, "BINDING_NOT_FOUND")
    seen = error_of(lambda: get_quota(stack, binding_id="no-such-binding"))
    assert (seen.code, seen.reason) == (grpc.StatusCode.NOT_FOUND, "BINDING_NOT_FOUND")
    mismatch = error_of(lambda: send_grant(stack, grant_message(stack, 20_000, giver=("650502198001011236",
                                                                                      "650500"))))
    assert (mismatch.code, mismatch.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BINDING_MISMATCH")


def released_changes(stack: Stack, binding_id: str) -> list[tuple[Any, ...]]:
    return rows(stack, "SELECT change, amount_fen FROM quota_changes WHERE binding_id = :b AND change = 'RELEASED'",
                b=binding_id)


@pytest.mark.parametrize("ending", ["giver_dissolves", "receiver_dissolves", "insurance_ended", "moved"])
def test_every_way_a_binding_ends_releases_its_unused_quota_once_and_tells_both(stack: Stack, ending: str) -> None:
    grant(stack, 100_000)
    drawn = consume(stack, 30_000)
    assert drawn.drawn_fen == 30_000
    ref = get_quota(stack).consumptions[0].settlement_ref
    if ending == "giver_dissolves":
        stack.dissolve(stack.binding_id)
    elif ending == "receiver_dissolves":
        stack.dissolve(stack.binding_id, signer=GANSU)
    else:
        kind = (relations_pb2.MEMBER_CHANGE_KIND_INSURANCE_ENDED if ending == "insurance_ended"
                else relations_pb2.MEMBER_CHANGE_KIND_POOLING_AREA_MOVED)
        stack.member_change(GIVER, kind, signer=XINJIANG)
    assert stack.binding(stack.binding_id).state == relations_pb2.BINDING_STATE_DISSOLVED
    assert figures(get_quota(stack).quota) == (100_000, 30_000, 70_000, 0)
    assert released_changes(stack, stack.binding_id) == [("RELEASED", 70_000)]
    # Ending it again releases nothing more; nothing can be drawn or granted; a reversal goes back to the giver.
    again = error_of(lambda: stack.dissolve(stack.binding_id))
    assert again.reason == "BINDING_NOT_ACTIVE"
    for call in (lambda: consume(stack, 1), lambda: grant(stack, 200_000)):
        seen = error_of(call)
        assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BINDING_NOT_ACTIVE")
    after = reverse(stack, ref, 10_000)
    assert figures(after.quota) == (100_000, 20_000, 80_000, 0)
    assert released_changes(stack, stack.binding_id) == [("RELEASED", 70_000)]

    # Both provinces are told the release; the giver's the reversal too (as a consumption notice).
    def told(province: str) -> set[tuple[str, str, int, int]]:
        return {(kind, change, amount, released) for kind, change, amount, released in rows(
            stack, "SELECT o.kind, c.change, c.amount_fen, c.released_fen FROM outbox o JOIN quota_changes c "
            "ON c.binding_id = o.subject_id AND CAST(c.version AS VARCHAR(16)) = o.state "
            "WHERE o.destination = :d AND o.subject_id = :b", d=province, b=stack.binding_id)}
    assert ("NOTIFY_QUOTA", "RELEASED", 70_000, 70_000) in told(XINJIANG)
    assert ("NOTIFY_QUOTA", "RELEASED", 70_000, 70_000) in told(GANSU)
    assert ("NOTIFY_CONSUMPTION", "REVERSED", 10_000, 10_000) in told(XINJIANG)
    wait_until(lambda: all(n.times_received == 1 for n in stack.snapshot(XINJIANG).quota_notices)
               and any(n.change == 5 for n in stack.snapshot(XINJIANG).quota_notices), what="the release told")


def test_a_binding_without_a_quota_ends_without_a_release(stack: Stack) -> None:
    stack.dissolve(stack.binding_id)
    assert rows(stack, "SELECT count(*) FROM quota_changes") == [(0,)]
    seen = error_of(lambda: grant(stack, 1_000))
    assert seen.reason == "BINDING_NOT_ACTIVE"


def test_operators_inspect_a_quota_and_read_the_pair_totals(stack: Stack) -> None:
    grant(stack, 100_000)
    consume(stack, 25_000)
    stack.wait_for_outbox_idle(XINJIANG)
    stack.wait_for_outbox_idle(GANSU)
    inspected = stack.operations.InspectQuota(operations_pb2.InspectQuotaRequest(binding_id=stack.binding_id),
                                              timeout=5)
    assert figures(inspected.quota) == (100_000, 25_000, 0, 75_000) and inspected.version == 2
    assert GIVER[0] not in str(inspected) and MOTHER[0] not in str(inspected)
    assert [c.drawn_fen for c in inspected.consumptions] == [25_000]
    kinds = sorted((m.destination, operations_pb2.OutboxMessageKind.Name(m.kind)) for m in inspected.messages)
    assert kinds == [(GANSU, "OUTBOX_MESSAGE_KIND_NOTIFY_QUOTA"), (GANSU, "OUTBOX_MESSAGE_KIND_NOTIFY_QUOTA"),
                     (XINJIANG, "OUTBOX_MESSAGE_KIND_NOTIFY_CONSUMPTION")]
    assert all(m.status == operations_pb2.OUTBOX_MESSAGE_STATUS_DONE for m in inspected.messages)
    unknown = error_of(lambda: stack.operations.InspectQuota(operations_pb2.InspectQuotaRequest(binding_id="nope"),
                                                             timeout=5))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "BINDING_NOT_FOUND")
    stats = stack.operations.GetStats(operations_pb2.GetStatsRequest(), timeout=5)
    [pair] = stats.quota_pairs
    assert (pair.giver_province, pair.receiver_province, figures(pair.totals), pair.consumption_count) == (
        XINJIANG, GANSU, (100_000, 25_000, 0, 75_000), 1)
