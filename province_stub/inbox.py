"""gongji.v1.ProvinceInbox as a provincial platform answers it: checks, pending credits, outcomes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import grpc
import grpc.aio
from google.protobuf import message as protobuf_message

from protos.gongji.v1 import common_pb2, province_pb2, province_pb2_grpc, transfers_pb2
from province_stub.client import INSTRUCTION_TYPE
from province_stub.people import Seed, mask_id
from province_stub.signing import GATEWAY_SIGNER, PublicKeyStore, sha256, verify_envelope, verify_with_store
from province_stub.state import (
    OUTCOME_TO_CREDIT_STATUS,
    Credit,
    DeliveryAnswer,
    Notification,
    StubState,
)

logger = logging.getLogger(__name__)

DELIVERY_TYPE = "gongji.v1.TransferDelivery"
OUTCOME_TYPE = "gongji.v1.Outcome"
MEMBER_QUERY_TYPE = "gongji.v1.MemberQuery"

Context = grpc.aio.ServicerContext[Any, Any]
# Called (on the event loop) with a transfer id once an ACCEPTED answer has been sent.
AcceptedHook = Callable[[str], None]

_ACCEPTED = province_pb2.DeliveryDecision.DELIVERY_DECISION_ACCEPTED
_REJECTED = province_pb2.DeliveryDecision.DELIVERY_DECISION_REJECTED


def _rejected(reason: str) -> province_pb2.DeliverTransferResponse:
    return province_pb2.DeliverTransferResponse(decision=_REJECTED, reject_reason=reason)


class ProvinceInbox(province_pb2_grpc.ProvinceInboxServicer):
    """Answers the gateway's calls from the seed file and the in-memory state."""

    def __init__(self, state: StubState, seed: Seed, keys: PublicKeyStore, on_accepted: AcceptedHook) -> None:
        self._state = state
        self._seed = seed
        self._keys = keys
        self._on_accepted = on_accepted

    async def _apply_behaviour(self, context: Context) -> None:
        behaviour = self._state.behaviour
        if behaviour.latency_ms > 0:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if self._state.take_failure():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "failure injected by the stub")

    async def _verify_gateway(
        self, envelope: common_pb2.SignedEnvelope, payload_type: str, context: Context
    ) -> None:
        """Abort UNAVAILABLE while the gateway's key is not readable, UNAUTHENTICATED if it is wrong."""
        failure = verify_with_store(self._keys, envelope, signer=GATEWAY_SIGNER, payload_type=payload_type)
        if failure == "UNKNOWN_KEY":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway public key not available yet")
        if failure:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad gateway signature")

    async def DeliverTransfer(
        self, request: province_pb2.DeliverTransferRequest, context: Context
    ) -> province_pb2.DeliverTransferResponse:
        await self._apply_behaviour(context)
        self._state.deliveries_received += 1
        failure = verify_with_store(
            self._keys, request.delivery, signer=GATEWAY_SIGNER, payload_type=DELIVERY_TYPE
        )
        if failure == "UNKNOWN_KEY":
            # Not our answer to give yet: the gateway retries once its key is published.
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway public key not available yet")
        if failure:
            return _rejected("BAD_GATEWAY_SIGNATURE")

        delivery = province_pb2.TransferDelivery()
        instruction = transfers_pb2.TransferInstruction()
        try:
            delivery.ParseFromString(request.delivery.payload)
            instruction.ParseFromString(request.instruction.payload)
        except protobuf_message.DecodeError:
            return _rejected("MALFORMED_MESSAGE")
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
        self._confirm_after_answer(context, transfer_id)
        return province_pb2.DeliverTransferResponse(decision=_ACCEPTED)

    def _check_giver_signature(
        self, request: province_pb2.DeliverTransferRequest, instruction: transfers_pb2.TransferInstruction
    ) -> str:
        envelope = request.instruction
        if envelope.payload_type != INSTRUCTION_TYPE or envelope.signer != instruction.header.sender:
            return "BAD_INSTRUCTION_SIGNATURE"
        key = self._keys.get(envelope.signer, envelope.key_id)
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

    def _confirm_after_answer(self, context: Context, transfer_id: str) -> None:
        # Confirming before the gateway has our ACCEPTED could race its own DELIVERED bookkeeping,
        # so the confirmation starts only when this RPC has finished.
        loop = asyncio.get_running_loop()

        def done(ctx: Context) -> None:
            if not ctx.cancelled():
                loop.call_soon_threadsafe(self._on_accepted, transfer_id)

        context.add_done_callback(cast(Any, done))

    async def NotifyOutcome(
        self, request: province_pb2.NotifyOutcomeRequest, context: Context
    ) -> province_pb2.NotifyOutcomeResponse:
        await self._apply_behaviour(context)
        await self._verify_gateway(request.outcome, OUTCOME_TYPE, context)
        outcome = province_pb2.Outcome()
        try:
            outcome.ParseFromString(request.outcome.payload)
        except protobuf_message.DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "outcome payload does not parse")
        message_id = outcome.header.message_id
        known = self._state.notifications.get(message_id)
        if known is not None:
            known.times_received += 1
            return province_pb2.NotifyOutcomeResponse()
        transfer = outcome.transfer if outcome.WhichOneof("subject") == "transfer" else None
        self._state.notifications[message_id] = Notification(
            message_id=message_id,
            transfer_id=transfer.transfer_id if transfer is not None else "",
            state=transfer.state if transfer is not None else transfers_pb2.TRANSFER_STATE_UNSPECIFIED,
            received_at=time.time(),
        )
        if transfer is not None:
            credit = self._state.credits.get(transfer.transfer_id)
            status = OUTCOME_TO_CREDIT_STATUS.get(transfer.state)
            if credit is not None and status is not None:
                credit.status = status
            logger.debug("outcome transfer=%s state=%s", transfer.transfer_id, transfer.state)
        return province_pb2.NotifyOutcomeResponse()

    async def CheckMember(
        self, request: province_pb2.CheckMemberRequest, context: Context
    ) -> province_pb2.CheckMemberResponse:
        await self._apply_behaviour(context)
        await self._verify_gateway(request.query, MEMBER_QUERY_TYPE, context)
        query = province_pb2.MemberQuery()
        try:
            query.ParseFromString(request.query.payload)
        except protobuf_message.DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "member query payload does not parse")
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
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "RequestConsent: not in the stub yet")

    async def NotifySettlement(
        self, request: province_pb2.NotifySettlementRequest, context: Context
    ) -> province_pb2.NotifySettlementResponse:
        await self._apply_behaviour(context)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "NotifySettlement: not in the stub yet")
