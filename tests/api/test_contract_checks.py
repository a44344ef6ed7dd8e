"""What every signed call is held to, whichever RPC it is: addressed to the gateway, a bounded message id, a
province that is not suspended — refused alike, and a refusal caused by state stored like any other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from protos.gongji.v1 import (
    common_pb2,
    operations_pb2,
    relations_pb2,
    relations_pb2_grpc,
    settlements_pb2,
    settlements_pb2_grpc,
    transfers_pb2,
    transfers_pb2_grpc,
)
from tests.support import GANSU, GIVER, MOTHER, XINJIANG, Stack, error_of, ts, unique_id

R = relations_pb2


def header(stack: Stack, sender: str, receiver: str = "gateway", message_id: str | None = None) -> common_pb2.Header:
    return common_pb2.Header(message_id=unique_id("c") if message_id is None else message_id, sender=sender,
                             receiver=receiver, created_at=ts(stack.clock.now()))


def calls(stack: Stack, receiver: str = "gateway", message_id: str | None = None) -> dict[str, Callable[[], Any]]:
    """Each signed call that names the gateway as its receiver, made with the header asked for."""
    relations = relations_pb2_grpc.RelationsStub(stack.channel)
    settlements = settlements_pb2_grpc.SettlementsStub(stack.channel)
    transfers = transfers_pb2_grpc.TransfersStub(stack.channel)
    binding = stack.binding_id

    def h(sender: str) -> common_pb2.Header:
        return header(stack, sender, receiver, message_id)

    return {
        "AcceptBinding": lambda: relations.AcceptBinding(R.AcceptBindingRequest(acceptance=stack.sign(
            R.BindingAcceptance(header=h(GANSU), binding_id=binding, decision=R.CONSENT_DECISION_REFUSE), GANSU)),
            timeout=5),
        "DissolveBinding": lambda: relations.DissolveBinding(R.DissolveBindingRequest(dissolution=stack.sign(
            R.BindingDissolution(header=h(XINJIANG), binding_id=binding, reason="MEMBER_REQUEST"))), timeout=5),
        "GetBinding": lambda: relations.GetBinding(R.GetBindingRequest(query=stack.sign(
            R.BindingQuery(header=h(XINJIANG), binding_id=binding))), timeout=5),
        "GetSettlement": lambda: settlements.GetSettlement(settlements_pb2.GetSettlementRequest(query=stack.sign(
            settlements_pb2.SettlementQuery(header=h(XINJIANG)))), timeout=5),
        "GetTransfer": lambda: transfers.GetTransfer(transfers_pb2.GetTransferRequest(query=stack.sign(
            transfers_pb2.TransferQuery(header=h(XINJIANG), transfer_id="t-1"))), timeout=5),
    }


@pytest.mark.parametrize("rpc", ["AcceptBinding", "DissolveBinding", "GetBinding", "GetSettlement", "GetTransfer"])
def test_a_message_addressed_to_another_province_is_refused_and_changes_nothing(stack: Stack, rpc: str) -> None:
    before = stack.counts()
    seen = error_of(calls(stack, receiver="610000")[rpc])
    assert (seen.code, seen.reason, seen.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "WRONG_RECEIVER", "header.receiver")
    assert stack.counts() == before and stack.binding(stack.binding_id).state == R.BINDING_STATE_ACTIVE


@pytest.mark.parametrize("rpc", ["GetBinding", "GetSettlement", "GetTransfer"])
def test_a_query_needs_a_message_id_like_every_message(stack: Stack, rpc: str) -> None:
    seen = error_of(calls(stack, message_id="")[rpc])
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MESSAGE_ID")


def test_verify_relation_checks_the_provinces_and_pooling_areas_as_a_proposal_does(stack: Stack) -> None:
    seen = error_of(lambda: stack.verify_relation(("650502199001011230", "650500"), receiver_province=XINJIANG,
                                                  giver=("652201198506152316", "650500")))
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "NOT_CROSS_PROVINCE")
    seen = error_of(lambda: stack.verify_relation((MOTHER[0], "650500")))  # a Gansu person in a Xinjiang pool
    assert (seen.code, seen.reason, seen.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_POOLING_AREA", "receiver.pooling_area")


def test_an_invalid_id_number_in_a_proposal_is_an_invalid_argument_as_in_a_transfer(stack: Stack) -> None:
    """One status per reason: INVALID_ID_NUMBER and SAME_PERSON are INVALID_ARGUMENT from every RPC."""
    seen = error_of(lambda: stack.propose(("620102196505120027", "620100")))  # a wrong check character
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID_NUMBER")
    seen = error_of(lambda: stack.propose((GIVER[0], "620100")))
    assert seen.code == grpc.StatusCode.INVALID_ARGUMENT and seen.reason in ("SAME_PERSON", "INVALID_POOLING_AREA")


def suspend(stack: Stack, code: str) -> None:
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=code, status=operations_pb2.PROVINCE_STATUS_SUSPENDED), timeout=5)


def test_a_suspended_province_changes_nothing_and_its_refusals_are_stored(stack: Stack) -> None:
    envelopes = {
        "propose": stack.signed_proposal(("620102201508160027", "620100"), relation_code="30"),
        "dissolve": stack.sign(R.BindingDissolution(header=header(stack, XINJIANG), binding_id=stack.binding_id,
                                                    reason="MEMBER_REQUEST")),
        "member change": stack.sign(R.MemberChange(header=header(stack, XINJIANG), person=common_pb2.PersonRef(
            id_number=GIVER[0], pooling_area=GIVER[1]), kind=R.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED)),
    }
    relations = relations_pb2_grpc.RelationsStub(stack.channel)
    send = {
        "propose": lambda e: stack.propose(envelope=e),
        "dissolve": lambda e: relations.DissolveBinding(R.DissolveBindingRequest(dissolution=e), timeout=5),
        "member change": lambda e: relations.ReportMemberChange(R.ReportMemberChangeRequest(change=e), timeout=5),
    }
    suspend(stack, XINJIANG)
    before = stack.counts()
    for name, envelope in envelopes.items():
        first = error_of(lambda n=name, e=envelope: send[n](e))
        assert (first.code, first.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PROVINCE_SUSPENDED"), name
        again = error_of(lambda n=name, e=envelope: send[n](e))  # a resend: the stored answer (D15)
        assert (again.reason, again.metadata.get("replay")) == ("PROVINCE_SUSPENDED", "true"), name
    assert stack.binding(stack.binding_id, signer=GANSU).state == R.BINDING_STATE_ACTIVE
    assert {k: v for k, v in stack.counts().items() if k != "requests"} == {
        k: v for k, v in before.items() if k != "requests"}
