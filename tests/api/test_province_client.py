"""The outbound client: each kind of outbox message goes by its own RPC and tells what the message holds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.domain.bindings import Binding, BindingState
from gateway.domain.clock import SystemClock
from gateway.domain.envelope import GATEWAY, Envelope
from gateway.domain.outbox import (
    DeliverTransfer,
    NotifyBindingOutcome,
    NotifySettlement,
    NotifyTransferOutcome,
    OutboxContent,
    OutboxMessage,
    RequestConsent,
)
from gateway.domain.transfers import Transfer, TransferState
from gateway.provinces.client import ProvinceClient
from gateway.security.signing import EnvelopeSigner
from gateway.usecases.outbox_ports import OutboxWork, SendResult
from protos.gongji.v1 import province_pb2, province_pb2_grpc, relations_pb2, transfers_pb2

NOW = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
GANSU = "620000"
INSTRUCTION = Envelope(b"instruction", "gongji.v1.TransferInstruction", "650000", "xj-1", "ed25519", b"\x01" * 64)
PROPOSAL = Envelope(b"proposal", "gongji.v1.BindingProposal", "650000", "xj-1", "ed25519", b"\x02" * 64)
FIGURES = Envelope(b"figures", "gongji.v1.SettlementFigures", GATEWAY, "gateway-k1", "ed25519", b"\x03" * 64)
TRANSFER = Transfer(transfer_id="t-1", state=TransferState.DECLINED, giver_province="650000", receiver_province=GANSU,
                    giver_id_masked="650502********1230", receiver_id_masked="620102********0026", amount_fen=500,
                    currency="CNY", created_at=NOW, updated_at=NOW, return_deadline=NOW + timedelta(hours=15),
                    delivery_deadline=NOW + timedelta(minutes=10), instruction_sha256=b"\xaa" * 32,
                    reason="RECEIVER_DECLINED", binding_id="b-1")
# The binding as it stands when its message goes: it has moved on since (suspended, then resumed).
BINDING = Binding(binding_id="b-1", state=BindingState.ACTIVE, giver_province="650000", receiver_province=GANSU,
                  giver_id_masked="650502********1230", receiver_id_masked="620102********0026", relation_code="52",
                  authorised_amount_fen=0, consent_by=NOW + timedelta(hours=72), created_at=NOW, updated_at=NOW,
                  proposal_sha256=b"\xbb" * 32)


class CapturingInbox(province_pb2_grpc.ProvinceInboxServicer):
    """A province's inbox that answers every call and keeps what came by which RPC."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def DeliverTransfer(self, request: Any, context: Any) -> province_pb2.DeliverTransferResponse:
        self.calls.append(("DeliverTransfer", request))
        return province_pb2.DeliverTransferResponse(decision=province_pb2.DELIVERY_DECISION_ACCEPTED)

    async def NotifyOutcome(self, request: Any, context: Any) -> province_pb2.NotifyOutcomeResponse:
        self.calls.append(("NotifyOutcome", province_pb2.Outcome.FromString(request.outcome.payload)))
        return province_pb2.NotifyOutcomeResponse()

    async def RequestConsent(self, request: Any, context: Any) -> province_pb2.RequestConsentResponse:
        self.calls.append(("RequestConsent", request))
        return province_pb2.RequestConsentResponse()

    async def NotifySettlement(self, request: Any, context: Any) -> province_pb2.NotifySettlementResponse:
        self.calls.append(("NotifySettlement", request))
        return province_pb2.NotifySettlementResponse()


async def send(content: OutboxContent, message_id: str) -> tuple[SendResult, list[tuple[str, Any]]]:
    inbox = CapturingInbox()
    server = grpc.aio.server()
    province_pb2_grpc.add_ProvinceInboxServicer_to_server(inbox, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = ProvinceClient(EnvelopeSigner(GATEWAY, "gateway-k1", Ed25519PrivateKey.generate()), SystemClock(), 5.0)
    try:
        message = OutboxMessage(1, GANSU, content, message_id, "t-1", 1, NOW)
        transfer_side = isinstance(content, DeliverTransfer | NotifyTransferOutcome)
        binding_side = isinstance(content, RequestConsent | NotifyBindingOutcome)
        envelope = INSTRUCTION if transfer_side else PROPOSAL if binding_side else None
        work = OutboxWork(message, f"127.0.0.1:{port}", True, TRANSFER if transfer_side else None,
                          envelope if isinstance(content, DeliverTransfer | RequestConsent) else None,
                          BINDING if binding_side else None, FIGURES if isinstance(content, NotifySettlement) else None)
        return await client.send(work), inbox.calls
    finally:
        await client.close()
        await server.stop(None)


def test_a_delivery_carries_the_instruction_as_received() -> None:
    result, [(rpc, request)] = asyncio.run(send(DeliverTransfer(), "dlv:t-1"))
    assert result == SendResult(acknowledged=True) and rpc == "DeliverTransfer"
    assert request.instruction.payload == INSTRUCTION.payload
    assert province_pb2.TransferDelivery.FromString(request.delivery.payload).transfer_id == "t-1"


def test_a_consent_request_carries_the_proposal_as_received() -> None:
    result, [(rpc, request)] = asyncio.run(send(RequestConsent(), "csn:b-1"))
    assert result.acknowledged and rpc == "RequestConsent"
    assert request.proposal.payload == PROPOSAL.payload
    assert province_pb2.ConsentRequest.FromString(request.consent_request.payload).binding_id == "b-1"


def test_settlement_figures_go_exactly_as_signed() -> None:
    result, [(rpc, request)] = asyncio.run(send(NotifySettlement(), "stl:2026-05-01:620000"))
    assert result.acknowledged and rpc == "NotifySettlement"
    assert (request.figures.payload, request.figures.signature) == (FIGURES.payload, FIGURES.signature)


def test_a_transfer_outcome_tells_the_state_and_reason_it_was_queued_with() -> None:
    told = NotifyTransferOutcome(TransferState.DECLINED, "RECEIVER_DECLINED")
    result, [(rpc, outcome)] = asyncio.run(send(told, "out:t-1:DECLINED"))
    assert result.acknowledged and rpc == "NotifyOutcome" and outcome.header.message_id == "out:t-1:DECLINED"
    assert (outcome.transfer.transfer_id, outcome.transfer.state, outcome.transfer.reason) == (
        "t-1", transfers_pb2.TRANSFER_STATE_DECLINED, "RECEIVER_DECLINED")


@pytest.mark.parametrize(("state", "reason"), [(BindingState.SUSPENDED, "SETTLEMENT_SUSPENDED"),
                                               (BindingState.ACTIVE, "")])
def test_a_binding_outcome_tells_its_own_change_however_the_binding_has_moved_since(state: BindingState,
                                                                                     reason: str) -> None:
    """The state and reason are the message's (stored with it), not read back from the binding as it is now."""
    message_id = f"bout:b-1:{state.value}:1777622400.000000"
    result, [(rpc, outcome)] = asyncio.run(send(NotifyBindingOutcome(state, reason), message_id))
    assert result.acknowledged and rpc == "NotifyOutcome" and outcome.header.message_id == message_id
    assert (outcome.binding.binding_id, outcome.binding.state, outcome.binding.reason) == (
        "b-1", relations_pb2.BindingState.Value(f"BINDING_STATE_{state.value}"), reason)
