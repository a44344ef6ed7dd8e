"""gongji.stub.v1.StubControl: lets tests, the demo and the bench steer and inspect the stub."""

from __future__ import annotations

import logging

import grpc

from protos.gongji.v1 import common_pb2, transfers_pb2
from protos.stub.v1 import control_pb2, control_pb2_grpc
from province_stub.client import (
    INSTRUCTION_TYPE,
    STATUS_DETAILS_KEY,
    ConfirmResult,
    GatewayClient,
    SubmitResult,
    new_transfer_id,
)
from province_stub.confirmer import Confirmer
from province_stub.inbox import Context
from province_stub.people import Seed, mask_id
from province_stub.state import Behaviour, StubState, SubmittedInstruction

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


def _fallback_pooling_area(id_number: str) -> str:
    # The prefecture part of the ID's address code: good enough for people not in the seed.
    return id_number[:4] + "00" if len(id_number) >= 4 else ""


class StubControl(control_pb2_grpc.StubControlServicer):
    """Test control. Unlike the inbox, these calls are never delayed or failed on purpose."""

    def __init__(self, state: StubState, seed: Seed, client: GatewayClient, confirmer: Confirmer) -> None:
        self._state = state
        self._seed = seed
        self._client = client
        self._confirmer = confirmer

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
            envelope = self._client.sign(INSTRUCTION_TYPE, instruction.SerializeToString())
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
    ) -> transfers_pb2.GetTransferResponse:
        result = await self._client.get_transfer(request.transfer_id)
        if result.response is not None:
            return result.response
        status = result.status
        trailing = ((STATUS_DETAILS_KEY, status.details_bin),) if status.details_bin else ()
        await context.abort(grpc.StatusCode[status.code], status.message, trailing)

    async def Snapshot(
        self, request: control_pb2.SnapshotRequest, context: Context
    ) -> control_pb2.SnapshotResponse:
        return self._state.snapshot()
