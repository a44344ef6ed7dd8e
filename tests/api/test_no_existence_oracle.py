"""A transfer, binding (its quota too) or settlement window of other provinces is, to a province, exactly one that
does not exist."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import (
    common_pb2,
    quotas_pb2,
    quotas_pb2_grpc,
    relations_pb2,
    settlements_pb2,
    settlements_pb2_grpc,
    transfers_pb2,
)
from protos.gongji.v1 import operations_pb2 as W
from tests.support import GANSU, MOTHER, XINJIANG, Stack, error_of, ts, unique_id, wait_until

SHAANXI = "610000"  # registered, with keys and a stub of its own, party to none of what the test makes
SHAANXI_GIVER = ("610103196207070037", "610100")  # Shaanxi, employee insurance
ABSENT_WINDOW = "2001-01-01"  # well formed, never opened


Refusal = tuple[Any, str, str, tuple[tuple[str, str], ...]]  # status, reason, message, metadata (field, replay)


@dataclass(frozen=True)
class Observed:
    """Everything a caller can see of a refusal, sent twice (the very same bytes), and what it left behind."""

    first: Refusal
    resent: Refusal
    rows_added: dict[str, int]


def header(stack: Stack, sender: str) -> common_pb2.Header:
    return common_pb2.Header(message_id=unique_id("m"), sender=sender, receiver="gateway",
                             created_at=ts(stack.clock.now()))


def observe(stack: Stack, call: Callable[[], Any]) -> Observed:
    before = stack.counts()
    seen = [error_of(call) for _ in range(2)]
    after = stack.counts()
    first, resent = ((s.code, s.reason, s.message, tuple(sorted(s.metadata.items()))) for s in seen)
    return Observed(first, resent, {table: after[table] - before[table] for table in after
                                    if after[table] != before[table]})


def signed_call(stack: Stack, method: Callable[..., Any], request_type: Any, field: str, message: Any,
                signer: str = SHAANXI) -> Callable[[], Any]:
    """One request, signed once: each call sends the same bytes."""
    request = request_type(**{field: stack.sign(message, signer)})
    return lambda: method(request, timeout=10)


def test_what_belongs_to_other_provinces_is_not_found_as_if_it_did_not_exist(stack: Stack) -> None:
    stack.add_province(SHAANXI, "陕西")
    stack.configure(GANSU, consent_mode=control_pb2.CONSENT_MODE_NEVER)
    transfer_id = stack.submit(stack.instruction()).transfer_id
    stack.wait_for_state(transfer_id, transfers_pb2.TRANSFER_STATE_COMMITTED)
    proposed = common_pb2.Receipt.FromString(stack.propose(MOTHER, relation_code="52").receipt.payload).subject_id
    window_id = stack.operations.CloseSettlementWindow(W.CloseSettlementWindowRequest(), timeout=10).window.window_id
    wait_until(lambda: stack.operations.GetSettlementWindow(W.GetSettlementWindowRequest(window_id=window_id),
                                                            timeout=5).window.state
               == settlements_pb2.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED, what="both provinces to acknowledge")
    for province in (XINJIANG, GANSU, SHAANXI):
        stack.wait_for_outbox_idle(province)

    transfers, relations = stack.transfers, stack.relations
    settlements = settlements_pb2_grpc.SettlementsStub(stack.channel)

    def get_transfer(tid: str) -> Callable[[], Any]:
        return signed_call(stack, transfers.GetTransfer, transfers_pb2.GetTransferRequest, "query",
                           transfers_pb2.TransferQuery(header=header(stack, SHAANXI), transfer_id=tid))

    def confirm(tid: str) -> Callable[[], Any]:
        return signed_call(stack, transfers.ConfirmTransfer, transfers_pb2.ConfirmTransferRequest, "confirmation",
                           transfers_pb2.TransferConfirmation(
                               header=header(stack, SHAANXI), transfer_id=tid,
                               decision=transfers_pb2.CONFIRMATION_DECISION_CREDITED))

    def submit(binding_id: str) -> Callable[[], Any]:
        instruction = stack.instruction(sender=SHAANXI, giver=SHAANXI_GIVER, binding_id=binding_id)
        return signed_call(stack, transfers.SubmitTransfer, transfers_pb2.SubmitTransferRequest, "instruction",
                           instruction)

    def get_binding(bid: str) -> Callable[[], Any]:
        return signed_call(stack, relations.GetBinding, relations_pb2.GetBindingRequest, "query",
                           relations_pb2.BindingQuery(header=header(stack, SHAANXI), binding_id=bid))

    def accept(bid: str) -> Callable[[], Any]:
        return signed_call(stack, relations.AcceptBinding, relations_pb2.AcceptBindingRequest, "acceptance",
                           relations_pb2.BindingAcceptance(
                               header=header(stack, SHAANXI), binding_id=bid,
                               decision=relations_pb2.CONSENT_DECISION_ACCEPT,
                               attestation=relations_pb2.Attestation(
                                   method=relations_pb2.ATTESTATION_METHOD_FACE, evidence_ref="ev-1",
                                   attested_at=ts(stack.clock.now()))))

    def dissolve(bid: str) -> Callable[[], Any]:
        return signed_call(stack, relations.DissolveBinding, relations_pb2.DissolveBindingRequest, "dissolution",
                           relations_pb2.BindingDissolution(header=header(stack, SHAANXI), binding_id=bid,
                                                            reason="MEMBER_REQUEST"))

    def get_settlement(wid: str) -> Callable[[], Any]:
        return signed_call(stack, settlements.GetSettlement, settlements_pb2.GetSettlementRequest, "query",
                           settlements_pb2.SettlementQuery(header=header(stack, SHAANXI), window_id=wid))

    def acknowledge(wid: str) -> Callable[[], Any]:
        return signed_call(stack, settlements.AcknowledgeSettlement, settlements_pb2.AcknowledgeSettlementRequest,
                           "acknowledgement", settlements_pb2.SettlementAcknowledgement(
                               header=header(stack, SHAANXI), window_id=wid, figures_sha256=bytes(32)))

    quotas = quotas_pb2_grpc.QuotasStub(stack.channel)
    shaanxi_person = common_pb2.PersonRef(id_number=SHAANXI_GIVER[0], pooling_area=SHAANXI_GIVER[1])

    def get_quota(bid: str) -> Callable[[], Any]:
        return signed_call(stack, quotas.GetQuota, quotas_pb2.GetQuotaRequest, "query",
                           quotas_pb2.QuotaQuery(header=header(stack, SHAANXI), binding_id=bid))

    def grant(bid: str) -> Callable[[], Any]:
        return signed_call(stack, quotas.GrantQuota, quotas_pb2.GrantQuotaRequest, "grant",
                           quotas_pb2.QuotaGrant(header=header(stack, SHAANXI), binding_id=bid, giver=shaanxi_person,
                                                 quota_fen=10_000, freeze_ref="frz-1"))

    def consume(bid: str) -> Callable[[], Any]:
        return signed_call(stack, quotas.ConsumeQuota, quotas_pb2.ConsumeQuotaRequest, "consumption",
                           quotas_pb2.QuotaConsumption(
                               header=header(stack, SHAANXI), binding_id=bid, receiver=shaanxi_person,
                               amount_fen=1_000, kind=quotas_pb2.CONSUMPTION_KIND_MEDICAL, settlement_ref="stl-1",
                               care_pooling_area="610100"))

    def reverse(bid: str) -> Callable[[], Any]:
        return signed_call(stack, quotas.ReverseConsumption, quotas_pb2.ReverseConsumptionRequest, "reversal",
                           quotas_pb2.ConsumptionReversal(header=header(stack, SHAANXI), binding_id=bid,
                                                          settlement_ref="stl-1", amount_fen=1,
                                                          reason="DRUG_RETURNED"))

    # (what, the call for something of Xinjiang's and Gansu's, the call for something that does not exist)
    cases = [
        ("GetTransfer", get_transfer(transfer_id), get_transfer(unique_id("absent"))),
        ("ConfirmTransfer", confirm(transfer_id), confirm(unique_id("absent"))),
        ("SubmitTransfer", submit(stack.binding_id), submit(unique_id("absent"))),
        ("GetBinding", get_binding(stack.binding_id), get_binding(unique_id("absent"))),
        ("AcceptBinding", accept(proposed), accept(unique_id("absent"))),
        ("DissolveBinding", dissolve(stack.binding_id), dissolve(unique_id("absent"))),
        ("GetSettlement", get_settlement(window_id), get_settlement(ABSENT_WINDOW)),
        ("AcknowledgeSettlement", acknowledge(window_id), acknowledge(ABSENT_WINDOW)),
        ("GetQuota", get_quota(stack.binding_id), get_quota(unique_id("absent"))),
        ("GrantQuota", grant(stack.binding_id), grant(unique_id("absent"))),
        ("ConsumeQuota", consume(stack.binding_id), consume(unique_id("absent"))),
        ("ReverseConsumption", reverse(stack.binding_id), reverse(unique_id("absent"))),
    ]
    told = {}
    for name, not_yours, absent in cases:
        told[name] = observe(stack, not_yours), observe(stack, absent)
    differ = {name: pair for name, pair in told.items() if pair[0] != pair[1]}
    assert not differ, f"not yours differs from absent in {sorted(differ)}: {differ}"
    # Not stored (D15): a resend of the same bytes is refused afresh, never replayed, and nothing is written.
    assert {name: (pair[0].first[0].name, pair[0].first[1], pair[0].resent == pair[0].first, pair[0].rows_added)
            for name, pair in told.items()} == {
        "GetTransfer": ("NOT_FOUND", "TRANSFER_NOT_FOUND", True, {}),
        "ConfirmTransfer": ("NOT_FOUND", "TRANSFER_NOT_FOUND", True, {}),
        "SubmitTransfer": ("NOT_FOUND", "BINDING_NOT_FOUND", True, {}),
        "GetBinding": ("NOT_FOUND", "BINDING_NOT_FOUND", True, {}),
        "AcceptBinding": ("NOT_FOUND", "BINDING_NOT_FOUND", True, {}),
        "DissolveBinding": ("NOT_FOUND", "BINDING_NOT_FOUND", True, {}),
        "GetSettlement": ("NOT_FOUND", "SETTLEMENT_WINDOW_NOT_FOUND", True, {}),
        "AcknowledgeSettlement": ("NOT_FOUND", "SETTLEMENT_WINDOW_NOT_FOUND", True, {}),
        "GetQuota": ("NOT_FOUND", "BINDING_NOT_FOUND", True, {}),
        "GrantQuota": ("NOT_FOUND", "BINDING_NOT_FOUND", True, {}),
        "ConsumeQuota": ("NOT_FOUND", "BINDING_NOT_FOUND", True, {}),
        "ReverseConsumption": ("NOT_FOUND", "BINDING_NOT_FOUND", True, {}),
    }
    # What the parties see is unchanged by all this.
    assert stack.get(transfer_id, signer=GANSU).state == transfers_pb2.TRANSFER_STATE_COMMITTED
    assert stack.binding(proposed).state == relations_pb2.BINDING_STATE_PROPOSED
    assert stack.binding(stack.binding_id, signer=GANSU).state == relations_pb2.BINDING_STATE_ACTIVE
