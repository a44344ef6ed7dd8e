"""gongji.v1.ProvinceInbox as a provincial platform answers it: checks, consent, pending credits, outcomes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import grpc
import grpc.aio
from google.protobuf import message as protobuf_message

from protos.gongji.v1 import (
    common_pb2,
    payload_types,
    province_pb2,
    province_pb2_grpc,
    relations_pb2,
    settlements_pb2,
    transfers_pb2,
)
from province_stub.gateway_keys import GatewayKeyDirectory
from province_stub.people import Seed, mask_id
from province_stub.quota_inbox import QuotaNoticeInbox
from province_stub.refusals import HeaderCheck, refuse
from province_stub.signing import PublicKeyStore, sha256, verify_envelope
from province_stub.state import (
    OUTCOME_TO_CREDIT_STATUS,
    Behaviour,
    ConsentRequestRecord,
    Credit,
    DeliveryAnswer,
    Notification,
    SettlementAckMode,
    SettlementRecord,
    StubState,
)

logger = logging.getLogger(__name__)


Context = grpc.aio.ServicerContext[Any, Any]
# Called (on the event loop) with a transfer id once an ACCEPTED answer has been sent.
# (transfer_id, confirm_by as seconds since the epoch, or None when the delivery set none)
AcceptedHook = Callable[[str, float | None], None]
# Called (on the event loop) with the request, and the behaviour in force when it was answered,
# once a RequestConsent has been answered.
ConsentHook = Callable[[ConsentRequestRecord, Behaviour], None]
# Called (on the event loop) with newly received settlement figures to acknowledge.
SettlementHook = Callable[[SettlementRecord], None]

_ACCEPTED = province_pb2.DeliveryDecision.DELIVERY_DECISION_ACCEPTED
_REJECTED = province_pb2.DeliveryDecision.DELIVERY_DECISION_REJECTED


def _rejected(reason: str) -> province_pb2.DeliverTransferResponse:
    return province_pb2.DeliverTransferResponse(decision=_REJECTED, reject_reason=reason)


def _after_rpc(context: Context, action: Callable[[], None], *, even_if_cancelled: bool = False) -> None:
    """Run `action` on the event loop once this RPC has finished, unless it was cancelled."""
    loop = asyncio.get_running_loop()

    def done(ctx: Context) -> None:
        if even_if_cancelled or not ctx.cancelled():
            loop.call_soon_threadsafe(action)

    context.add_done_callback(cast(Any, done))


class ProvinceInbox(province_pb2_grpc.ProvinceInboxServicer):
    """Answers the gateway's calls from the seed file and the in-memory state."""

    def __init__(
        self,
        state: StubState,
        seed: Seed,
        gateway_keys: GatewayKeyDirectory,
        province_keys: PublicKeyStore,
        header_check: HeaderCheck,
        on_accepted: AcceptedHook,
        on_consent_requested: ConsentHook,
        on_settlement: SettlementHook,
    ) -> None:
        self._state = state
        self._seed = seed
        self._gateway_keys = gateway_keys
        self._province_keys = province_keys
        self._header_check = header_check
        self._on_accepted = on_accepted
        self._on_consent_requested = on_consent_requested
        self._on_settlement = on_settlement
        self._quota_notices = QuotaNoticeInbox(state, header_check, self._apply_behaviour, self._verify_gateway)

    async def _apply_behaviour(self, context: Context) -> None:
        behaviour = self._state.behaviour
        if behaviour.latency_ms > 0:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if self._state.take_failure():
            await refuse(context, "FAILURE_INJECTED", "failure injected by the stub")

    async def _verify_gateway(
        self, envelope: common_pb2.SignedEnvelope, payload_type: str, context: Context
    ) -> None:
        """Abort UNAVAILABLE while the gateway does not list the key, UNAUTHENTICATED if it is wrong."""
        failure = await self._gateway_keys.verify(envelope, payload_type=payload_type)
        if failure == "UNKNOWN_KEY":
            await refuse(context, "GATEWAY_KEY_UNKNOWN",
                         "gateway public key not available yet", "key_id")
        if failure:
            await refuse(context, "BAD_GATEWAY_SIGNATURE", "bad gateway signature",
                         "signature")

    async def DeliverTransfer(
        self, request: province_pb2.DeliverTransferRequest, context: Context
    ) -> province_pb2.DeliverTransferResponse:
        await self._apply_behaviour(context)
        self._state.deliveries_received += 1
        failure = await self._gateway_keys.verify(request.delivery, payload_type=payload_types.TRANSFER_DELIVERY)
        if failure == "UNKNOWN_KEY":
            # Not our answer to give yet: the gateway retries, by when it lists its key.
            await refuse(context, "GATEWAY_KEY_UNKNOWN",
                         "gateway public key not available yet", "key_id")
        if failure:
            return _rejected("BAD_GATEWAY_SIGNATURE")

        delivery = province_pb2.TransferDelivery()
        instruction = transfers_pb2.TransferInstruction()
        try:
            delivery.ParseFromString(request.delivery.payload)
            instruction.ParseFromString(request.instruction.payload)
        except protobuf_message.DecodeError:
            return _rejected("MALFORMED_MESSAGE")
        # Misaddressed, or replayed late: no answer about this transfer (a rejection would be final at the
        # gateway), a refusal; the gateway signs each attempt anew, so its own resends pass.
        await self._header_check.check(delivery.header, context)
        instruction_sha256 = sha256(request.instruction.payload)
        transfer_id = instruction.header.message_id
        if delivery.instruction_sha256 != instruction_sha256 or delivery.transfer_id != transfer_id:
            return _rejected("DELIVERY_MISMATCH")
        reason = self._check_giver_signature(request, instruction)
        if reason:
            return _rejected(reason)
        if instruction.header.receiver != self._state.province:
            return _rejected("WRONG_PROVINCE")

        answer = self._state.answers.get(transfer_id)
        if answer is None:
            answer = self._decide(instruction, instruction_sha256)
            self._state.answers[transfer_id] = answer
            if answer.accepted:
                self._state.credits[transfer_id] = Credit(
                    transfer_id=transfer_id,
                    amount_fen=instruction.amount_fen,
                    instruction_sha256=instruction_sha256,
                )
            logger.debug(
                "delivery transfer=%s receiver=%s amount_fen=%d accepted=%s %s",
                transfer_id,
                mask_id(instruction.receiver.id_number),
                instruction.amount_fen,
                answer.accepted,
                answer.reject_reason,
            )
        elif answer.instruction_sha256 != instruction_sha256:
            return _rejected("MODIFIED_INSTRUCTION")

        if not answer.accepted:
            return _rejected(answer.reject_reason)
        confirm_by = delivery.confirm_by.ToNanoseconds() / 1e9 if delivery.HasField("confirm_by") else None
        self._confirm_after_answer(context, transfer_id, confirm_by)
        return province_pb2.DeliverTransferResponse(decision=_ACCEPTED)

    def _check_giver_signature(
        self, request: province_pb2.DeliverTransferRequest, instruction: transfers_pb2.TransferInstruction
    ) -> str:
        envelope = request.instruction
        if envelope.payload_type != payload_types.TRANSFER_INSTRUCTION or envelope.signer != instruction.header.sender:
            return "BAD_INSTRUCTION_SIGNATURE"
        key = self._province_keys.get(envelope.signer, envelope.key_id)
        # A giver province whose key we were not given is vouched for by the gateway's delivery.
        if key is not None and not verify_envelope(envelope, key):
            return "BAD_INSTRUCTION_SIGNATURE"
        return ""

    def _decide(
        self, instruction: transfers_pb2.TransferInstruction, instruction_sha256: bytes
    ) -> DeliveryAnswer:
        person = self._seed.find(instruction.receiver.id_number)
        if person is None or person.status != "NORMAL":
            return DeliveryAnswer(instruction_sha256, accepted=False, reject_reason="RECEIVER_NOT_INSURED")
        if person.settlement_suspended:
            return DeliveryAnswer(instruction_sha256, accepted=False, reject_reason="SETTLEMENT_SUSPENDED")
        reject_reason = self._state.behaviour.reject_reason
        if reject_reason:
            return DeliveryAnswer(instruction_sha256, accepted=False, reject_reason=reject_reason)
        return DeliveryAnswer(instruction_sha256, accepted=True)

    def _confirm_after_answer(self, context: Context, transfer_id: str, confirm_by: float | None) -> None:
        # Confirmed once this RPC has finished, so the confirmation normally follows the gateway's record
        # of the delivery. Also when the call ended cancelled (a connection cut after our answer went
        # out): the credit is ours to confirm either way, and the gateway takes a confirmation that
        # overtakes its record of the delivery.
        _after_rpc(context, lambda: self._on_accepted(transfer_id, confirm_by), even_if_cancelled=True)

    async def NotifyOutcome(
        self, request: province_pb2.NotifyOutcomeRequest, context: Context
    ) -> province_pb2.NotifyOutcomeResponse:
        await self._apply_behaviour(context)
        await self._verify_gateway(request.outcome, payload_types.OUTCOME, context)
        outcome = province_pb2.Outcome()
        try:
            outcome.ParseFromString(request.outcome.payload)
        except protobuf_message.DecodeError:
            await refuse(context, "MALFORMED_MESSAGE",
                         "outcome payload does not parse", "payload")
        await self._header_check.check(outcome.header, context)
        message_id = outcome.header.message_id
        known = self._state.notifications.get(message_id)
        if known is not None:
            known.times_received += 1
            return province_pb2.NotifyOutcomeResponse()
        subject = outcome.WhichOneof("subject")
        transfer = outcome.transfer if subject == "transfer" else None
        binding = outcome.binding if subject == "binding" else None
        self._state.notifications[message_id] = Notification(
            message_id=message_id,
            transfer_id=transfer.transfer_id if transfer is not None else "",
            state=transfer.state if transfer is not None else transfers_pb2.TRANSFER_STATE_UNSPECIFIED,
            received_at=time.time(),
            binding_id=binding.binding_id if binding is not None else "",
            binding_state=binding.state if binding is not None else relations_pb2.BINDING_STATE_UNSPECIFIED,
        )
        if transfer is not None:
            credit = self._state.credits.get(transfer.transfer_id)
            status = OUTCOME_TO_CREDIT_STATUS.get(transfer.state)
            if credit is not None and status is not None:
                credit.status = status
            logger.debug("outcome transfer=%s state=%s", transfer.transfer_id, transfer.state)
        if binding is not None:
            logger.debug("outcome binding=%s state=%s %s", binding.binding_id, binding.state, binding.reason)
        return province_pb2.NotifyOutcomeResponse()

    async def CheckMember(
        self, request: province_pb2.CheckMemberRequest, context: Context
    ) -> province_pb2.CheckMemberResponse:
        await self._apply_behaviour(context)
        await self._verify_gateway(request.query, payload_types.MEMBER_QUERY, context)
        query = province_pb2.MemberQuery()
        try:
            query.ParseFromString(request.query.payload)
        except protobuf_message.DecodeError:
            await refuse(context, "MALFORMED_MESSAGE",
                         "member query payload does not parse", "payload")
        # A query meant for another province, or recorded and replayed, learns nothing of our members.
        await self._header_check.check(query.header, context)
        person = self._seed.find(query.person.id_number)
        if person is None:
            return province_pb2.CheckMemberResponse(status=province_pb2.MEMBER_STATUS_NOT_FOUND)
        return province_pb2.CheckMemberResponse(
            status=(
                province_pb2.MEMBER_STATUS_NORMAL
                if person.status == "NORMAL"
                else province_pb2.MEMBER_STATUS_INACTIVE
            ),
            insutype=person.insutype,
            pooling_area=person.pooling_area,
            wallet_open=person.wallet_open,
            settlement_suspended=person.settlement_suspended,
        )

    async def RequestConsent(
        self, request: province_pb2.RequestConsentRequest, context: Context
    ) -> province_pb2.RequestConsentResponse:
        await self._apply_behaviour(context)
        await self._verify_gateway(request.consent_request, payload_types.CONSENT_REQUEST, context)
        consent_request = province_pb2.ConsentRequest()
        proposal = relations_pb2.BindingProposal()
        try:
            consent_request.ParseFromString(request.consent_request.payload)
            proposal.ParseFromString(request.proposal.payload)
        except protobuf_message.DecodeError:
            await refuse(context, "MALFORMED_MESSAGE",
                         "consent request or proposal does not parse", "payload")
        await self._header_check.check(consent_request.header, context)
        proposal_sha256 = sha256(request.proposal.payload)
        binding_id = consent_request.binding_id
        # The gateway vouches for this exact proposal under this binding id (its message_id).
        if consent_request.proposal_sha256 != proposal_sha256 or proposal.header.message_id != binding_id:
            await refuse(context, "CONSENT_REQUEST_MISMATCH",
                         "consent request does not match the proposal", "proposal_sha256")
        if not self._giver_signature_ok(request.proposal, proposal):
            await refuse(context, "BAD_PROPOSAL_SIGNATURE", "bad proposal signature",
                         "proposal")

        self._state.consent_requests_received += 1
        record = self._state.consent_requests.get(binding_id)
        if record is None:
            record = ConsentRequestRecord(
                binding_id=binding_id,
                proposal_sha256=proposal_sha256,
                receiver_id_number=proposal.receiver.id_number,
                giver_province=proposal.header.sender,
                received_at=time.time(),
            )
            self._state.consent_requests[binding_id] = record
            logger.debug(
                "consent requested binding=%s giver_province=%s receiver=%s relation=%s",
                binding_id,
                record.giver_province,
                mask_id(record.receiver_id_number),
                proposal.relation_code,
            )
        else:
            record.times_received += 1
        # Answering before the gateway has our acknowledgement could race its PROPOSED bookkeeping,
        # so the answer starts only when this RPC has finished, as the behaviour now in force says.
        behaviour = self._state.behaviour
        _after_rpc(context, lambda: self._on_consent_requested(record, behaviour))
        return province_pb2.RequestConsentResponse()

    def _giver_signature_ok(
        self, envelope: common_pb2.SignedEnvelope, proposal: relations_pb2.BindingProposal
    ) -> bool:
        if envelope.payload_type != payload_types.BINDING_PROPOSAL or envelope.signer != proposal.header.sender:
            return False
        key = self._province_keys.get(envelope.signer, envelope.key_id)
        # A giver province whose key we were not given is vouched for by the gateway's request.
        return key is None or verify_envelope(envelope, key)

    async def NotifySettlement(
        self, request: province_pb2.NotifySettlementRequest, context: Context
    ) -> province_pb2.NotifySettlementResponse:
        await self._apply_behaviour(context)
        await self._verify_gateway(request.figures, payload_types.SETTLEMENT_FIGURES, context)
        figures = settlements_pb2.SettlementFigures()
        try:
            figures.ParseFromString(request.figures.payload)
        except protobuf_message.DecodeError:
            await refuse(context, "MALFORMED_MESSAGE",
                         "settlement figures do not parse", "payload")
        # Not judged by age: the gateway signs a window's figures once, at closing, and resends those very bytes
        # until they are acknowledged, however long that takes (the acknowledgement names their digest).
        await self._header_check.check(figures.header, context, fresh=False)
        known = self._state.settlements.get(figures.window_id)
        if known is not None:
            known.times_received += 1
            return province_pb2.NotifySettlementResponse()
        net_fen = sum(p.net_fen for p in figures.positions if p.province == self._state.province)
        record = SettlementRecord(
            window_id=figures.window_id,
            envelope=request.figures,
            figures_sha256=sha256(request.figures.payload),
            net_fen=net_fen,
        )
        self._state.settlements[figures.window_id] = record
        logger.debug("settlement window=%s net_fen=%d pairs=%d", figures.window_id, net_fen, len(figures.pairs))
        if self._state.behaviour.settlement_ack_mode is SettlementAckMode.AUTO:
            # Acknowledging before the gateway has our answer is allowed, but keep the order a platform would.
            _after_rpc(context, lambda: self._on_settlement(record))
        return province_pb2.NotifySettlementResponse()

    async def NotifyQuota(
        self, request: province_pb2.NotifyQuotaRequest, context: Context
    ) -> province_pb2.NotifyQuotaResponse:
        return await self._quota_notices.notify_quota(request, context)

    async def NotifyConsumption(
        self, request: province_pb2.NotifyConsumptionRequest, context: Context
    ) -> province_pb2.NotifyConsumptionResponse:
        return await self._quota_notices.notify_consumption(request, context)
