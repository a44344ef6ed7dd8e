"""gongji.stub.v1.StubControl: lets tests, the demo and the bench steer and inspect the stub."""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import common_pb2, payload_types, relations_pb2, transfers_pb2
from province_stub.answers import STATUS_DETAILS_KEY, CallResult, ConfirmResult, GatewayStatus, SubmitResult
from province_stub.client import GatewayClient
from province_stub.confirmer import Confirmer
from province_stub.consent import Consenter
from province_stub.inbox import Context
from province_stub.messages import DEFAULT_CONSENT_SECONDS, new_binding_id, new_message_id, new_transfer_id
from province_stub.people import Seed, mask_id
from province_stub.quota_control import QuotaControl
from province_stub.settlement import Acknowledger
from province_stub.state import Behaviour, ConsentMode, StubState, SubmittedInstruction, consent_mode_from_proto

logger = logging.getLogger(__name__)


def _submit_response(result: SubmitResult) -> control_pb2.StubSubmitResponse:
    return control_pb2.StubSubmitResponse(
        transfer_id=result.transfer_id,
        code=result.status.code,
        reason=result.status.reason,
        state=result.state,
        replay=result.replay,
        receipt_verified=result.receipt_verified,
        receipt_sha256=result.receipt_sha256,
    )


def _confirm_response(result: ConfirmResult) -> control_pb2.ConfirmResponse:
    return control_pb2.ConfirmResponse(
        code=result.status.code, reason=result.status.reason, state=result.state
    )


def _call_response(result: CallResult) -> control_pb2.StubCallResponse:
    return control_pb2.StubCallResponse(
        subject_id=result.subject_id,
        code=result.status.code,
        reason=result.status.reason,
        state=result.state,
        replay=result.replay,
    )


async def _abort_as_gateway(context: Context, status: GatewayStatus) -> NoReturn:
    """Pass the gateway's error on unchanged, ErrorInfo trailer included."""
    trailing = ((STATUS_DETAILS_KEY, status.details_bin),) if status.details_bin else ()
    await context.abort(grpc.StatusCode[status.code], status.message, trailing)


def _fallback_pooling_area(id_number: str) -> str:
    # The prefecture part of the ID's address code: good enough for people not in the seed.
    return id_number[:4] + "00" if len(id_number) >= 4 else ""


class StubControl(control_pb2_grpc.StubControlServicer):
    """Test control. Unlike the inbox, these calls are never delayed or failed on purpose."""

    def __init__(
        self,
        state: StubState,
        seed: Seed,
        client: GatewayClient,
        confirmer: Confirmer,
        consenter: Consenter,
        acknowledger: Acknowledger,
        quota: QuotaControl,
    ) -> None:
        self._state = state
        self._seed = seed
        self._client = client
        self._confirmer = confirmer
        self._consenter = consenter
        self._acknowledger = acknowledger
        self._quota = quota

    async def Configure(self, request: control_pb2.Behaviour, context: Context) -> control_pb2.Behaviour:
        try:
            behaviour = Behaviour.from_proto(request)
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        self._state.behaviour = behaviour
        logger.info("behaviour now %s", behaviour)
        return behaviour.to_proto()

    async def SubmitTransfer(
        self, request: control_pb2.StubSubmitRequest, context: Context
    ) -> control_pb2.StubSubmitResponse:
        # A giver missing from the seed is still submitted (pooling area guessed from the ID), so
        # tests can see the gateway judge numbers this province would never send.
        giver = self._seed.find(request.giver_id_number)
        if giver is None:
            logger.warning("submitting for %s, who is not in the seed", mask_id(request.giver_id_number))
        transfer_id = request.transfer_id or new_transfer_id(self._state.province)
        envelope = self._client.instruction_envelope(
            transfer_id,
            common_pb2.PersonRef(
                id_number=request.giver_id_number,
                pooling_area=(
                    giver.pooling_area if giver else _fallback_pooling_area(request.giver_id_number)
                ),
            ),
            common_pb2.PersonRef(
                id_number=request.receiver_id_number, pooling_area=request.receiver_pooling_area
            ),
            request.receiver_province,
            request.amount_fen,
            binding_id=request.binding_id,
        )
        # Kept before sending, so a submission lost in transit can still be resent.
        self._state.submitted.setdefault(transfer_id, SubmittedInstruction(transfer_id, envelope))
        result = await self._client.submit(envelope, transfer_id)
        logger.debug("submitted transfer=%s: %s %s", transfer_id, result.status.code, result.status.reason)
        return _submit_response(result)

    async def Resubmit(
        self, request: control_pb2.ResubmitRequest, context: Context
    ) -> control_pb2.StubSubmitResponse:
        submitted = self._state.submitted.get(request.transfer_id)
        if submitted is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no instruction submitted under that id")
        envelope = submitted.envelope
        if request.modify:
            instruction = transfers_pb2.TransferInstruction()
            instruction.ParseFromString(envelope.payload)
            instruction.amount_fen += 1
            envelope = self._client.sign(payload_types.TRANSFER_INSTRUCTION, instruction.SerializeToString())
        result = await self._client.submit(envelope, request.transfer_id)
        return _submit_response(result)

    async def Confirm(
        self, request: control_pb2.ConfirmRequest, context: Context
    ) -> control_pb2.ConfirmResponse:
        # Sent even for a transfer not held here, so tests can see the gateway refuse it.
        result = await self._confirmer.confirm(request.transfer_id, request.decline)
        return _confirm_response(result)

    async def QueryTransfer(
        self, request: control_pb2.QueryTransferRequest, context: Context
    ) -> control_pb2.QueryTransferResponse:
        result = await self._client.get_transfer(request.transfer_id)
        if result.response is not None:
            return control_pb2.QueryTransferResponse(transfer=result.response.transfer)
        await _abort_as_gateway(context, result.status)

    async def Snapshot(
        self, request: control_pb2.SnapshotRequest, context: Context
    ) -> control_pb2.SnapshotResponse:
        return self._state.snapshot()

    async def ProposeBinding(
        self, request: control_pb2.StubProposeRequest, context: Context
    ) -> control_pb2.StubCallResponse:
        # Like SubmitTransfer, a giver missing from the seed is still proposed, for the gateway to judge.
        giver = self._seed.find(request.giver_id_number)
        if giver is None:
            logger.warning("proposing for %s, who is not in the seed", mask_id(request.giver_id_number))
        binding_id = request.binding_id or new_binding_id(self._state.province)
        # Negative seconds are sent as they are, so tests can see the gateway refuse a past deadline.
        consent_seconds = request.consent_seconds or DEFAULT_CONSENT_SECONDS
        envelope = self._client.proposal_envelope(
            binding_id,
            common_pb2.PersonRef(
                id_number=request.giver_id_number,
                pooling_area=(
                    giver.pooling_area if giver else _fallback_pooling_area(request.giver_id_number)
                ),
            ),
            common_pb2.PersonRef(
                id_number=request.receiver_id_number, pooling_area=request.receiver_pooling_area
            ),
            request.receiver_province,
            request.relation_code,
            authorised_amount_fen=request.authorised_amount_fen,
            consent_seconds=consent_seconds,
        )
        result = await self._client.propose_binding(envelope, binding_id)
        logger.debug(
            "proposed binding=%s: %s %s %s", binding_id, result.status.code, result.status.reason, result.state
        )
        return _call_response(result)

    async def AnswerConsent(
        self, request: control_pb2.AnswerConsentRequest, context: Context
    ) -> control_pb2.StubCallResponse:
        asked = self._state.consent_requests.get(request.binding_id)
        if asked is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no consent requested here for that binding")
        try:
            mode = consent_mode_from_proto(request.mode)
            if mode is ConsentMode.NEVER:
                raise ValueError("NEVER is not an answer")
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        result = await self._consenter.answer(asked, mode)
        return _call_response(result)

    async def DissolveBinding(
        self, request: control_pb2.StubDissolveRequest, context: Context
    ) -> control_pb2.StubCallResponse:
        envelope = self._client.dissolution_envelope(
            new_message_id("dis"), request.binding_id, request.reason or "MEMBER_REQUEST"
        )
        result = await self._client.dissolve_binding(envelope, request.binding_id)
        logger.debug("dissolve binding=%s: %s %s", request.binding_id, result.status.code, result.status.reason)
        return _call_response(result)

    async def ReportMemberChange(
        self, request: control_pb2.StubMemberChangeRequest, context: Context
    ) -> control_pb2.StubCallResponse:
        person = self._seed.find(request.id_number)
        if person is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "that person is not insured here")
        message_id = new_message_id("mch")
        envelope = self._client.member_change_envelope(
            message_id,
            common_pb2.PersonRef(id_number=person.id_number, pooling_area=person.pooling_area),
            request.kind,
        )
        result = await self._client.report_member_change(envelope, message_id)
        logger.debug(
            "member change %s person=%s kind=%s: %s %s",
            message_id,
            mask_id(person.id_number),
            relations_pb2.MemberChangeKind.Name(request.kind),
            result.status.code,
            result.status.reason,
        )
        return _call_response(result)

    async def QueryBinding(
        self, request: control_pb2.QueryBindingRequest, context: Context
    ) -> control_pb2.QueryBindingResponse:
        result = await self._client.get_binding(request.binding_id)
        if result.response is not None:
            return control_pb2.QueryBindingResponse(binding=result.response.binding)
        await _abort_as_gateway(context, result.status)

    async def AcknowledgeSettlement(
        self, request: control_pb2.StubAcknowledgeRequest, context: Context
    ) -> control_pb2.StubCallResponse:
        record = self._state.settlements.get(request.window_id)
        if record is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no figures received for that window")
        result = await self._acknowledger.acknowledge(record, wrong_digest=request.wrong_digest)
        logger.debug("acknowledge window=%s: %s %s", request.window_id, result.status.code, result.status.reason)
        return _call_response(result)

    async def QuerySettlement(
        self, request: control_pb2.QuerySettlementRequest, context: Context
    ) -> control_pb2.QuerySettlementResponse:
        result = await self._client.get_settlement(request.window_id)
        if result.response is not None:
            answer = result.response
            return control_pb2.QuerySettlementResponse(
                state=answer.state, figures=answer.figures, acknowledged_by=answer.acknowledged_by
            )
        await _abort_as_gateway(context, result.status)

    # --- the quota regime (province_stub/quota_control.py) ---

    async def SetAccount(self, request: control_pb2.SetAccountRequest, context: Context) -> control_pb2.AccountView:
        return await self._quota.set_account(request, context)

    async def GrantQuota(self, request: control_pb2.StubGrantRequest, context: Context
                         ) -> control_pb2.StubGrantResponse:
        return await self._quota.grant_quota(request, context)

    async def SettleBill(self, request: control_pb2.SettleBillRequest, context: Context
                         ) -> control_pb2.SettleBillResponse:
        return await self._quota.settle_bill(request, context)

    async def ReverseBill(self, request: control_pb2.ReverseBillRequest, context: Context
                          ) -> control_pb2.ReverseBillResponse:
        return await self._quota.reverse_bill(request, context)

    async def QueryQuota(self, request: control_pb2.QueryQuotaRequest, context: Context
                         ) -> control_pb2.QueryQuotaResponse:
        result = await self._quota.query_quota(request)
        if result.response is not None:
            return control_pb2.QueryQuotaResponse(answer=result.response)
        await _abort_as_gateway(context, result.status)

    async def Ledger(self, request: control_pb2.LedgerRequest, context: Context) -> control_pb2.LedgerResponse:
        return self._quota.ledger()
