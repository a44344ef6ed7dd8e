"""The province's calls to the gateway: each signed message sent with a deadline, the answer read into a result."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import grpc.aio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protos.gongji.v1 import (
    common_pb2,
    relations_pb2,
    relations_pb2_grpc,
    settlements_pb2,
    settlements_pb2_grpc,
    transfers_pb2,
    transfers_pb2_grpc,
)
from province_stub.answers import (
    OK,
    BindingQueryResult,
    CallResult,
    ConfirmResult,
    QueryResult,
    SettlementQueryResult,
    SubmitResult,
    fetch_and_read_receipt,
    state_of,
    status_from_error,
)
from province_stub.gateway_keys import GatewayKeyDirectory
from province_stub.messages import ProvinceSigner

DEFAULT_DEADLINE_S = 5.0


class GatewayClient(ProvinceSigner):
    """Signs as one province and calls gongji.v1.Transfers, Relations and Settlements, with a deadline on every call.

    Reusable outside the stub (the bench driver signs and submits through it). gRPC errors never escape:
    they come back as a status code name and the ErrorInfo reason.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        province: str,
        key_id: str,
        private_key: Ed25519PrivateKey,
        gateway_keys: GatewayKeyDirectory,
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
        now: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(province, key_id, private_key, now)
        self._gateway_keys = gateway_keys
        self._deadline_s = deadline_s
        self._transfers = transfers_pb2_grpc.TransfersStub(channel)
        self._relations = relations_pb2_grpc.RelationsStub(channel)
        self._settlements = settlements_pb2_grpc.SettlementsStub(channel)

    # --- transfers (gongji.v1.Transfers) ---

    async def submit(self, envelope: common_pb2.SignedEnvelope, transfer_id: str = "") -> SubmitResult:
        """Send a signed instruction as is; `transfer_id` is only echoed into the result."""
        request = transfers_pb2.SubmitTransferRequest(instruction=envelope)
        try:
            response = await self._transfers.SubmitTransfer(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return SubmitResult(transfer_id=transfer_id, status=status_from_error(error))
        receipt = await fetch_and_read_receipt(self._gateway_keys, response.receipt, envelope.payload)
        return SubmitResult(
            transfer_id=response.transfer_id or transfer_id,
            status=OK,
            state=state_of(response.state, receipt),
            replay=response.replay,
            receipt_verified=receipt is not None,
            receipt_sha256=hashlib.sha256(response.receipt.payload).hexdigest(),
        )

    async def confirm(self, envelope: common_pb2.SignedEnvelope, transfer_id: str = "") -> ConfirmResult:
        """Send a signed confirmation as is (resending the same bytes is a replay at the gateway)."""
        request = transfers_pb2.ConfirmTransferRequest(confirmation=envelope)
        try:
            response = await self._transfers.ConfirmTransfer(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return ConfirmResult(transfer_id=transfer_id, status=status_from_error(error))
        receipt = await fetch_and_read_receipt(self._gateway_keys, response.receipt, envelope.payload)
        return ConfirmResult(
            transfer_id=transfer_id,
            status=OK,
            state=state_of(response.state, receipt),
            replay=response.replay,
            receipt_verified=receipt is not None,
        )

    async def get_transfer(self, transfer_id: str) -> QueryResult:
        request = transfers_pb2.GetTransferRequest(query=self.transfer_query_envelope(transfer_id))
        try:
            response = await self._transfers.GetTransfer(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return QueryResult(status=status_from_error(error))
        return QueryResult(status=OK, response=response)

    # --- bindings (gongji.v1.Relations) ---

    async def _call_result(
        self, subject_id: str, receipt: common_pb2.SignedEnvelope, replay: bool, request_payload: bytes
    ) -> CallResult:
        parsed = await fetch_and_read_receipt(self._gateway_keys, receipt, request_payload)
        return CallResult(
            subject_id=subject_id,
            status=OK,
            state=parsed.state if parsed is not None else "",
            replay=replay,
            receipt_verified=parsed is not None,
        )

    async def propose_binding(self, envelope: common_pb2.SignedEnvelope, binding_id: str) -> CallResult:
        request = relations_pb2.ProposeBindingRequest(proposal=envelope)
        try:
            response = await self._relations.ProposeBinding(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return CallResult(subject_id=binding_id, status=status_from_error(error))
        return await self._call_result(binding_id, response.receipt, response.replay, envelope.payload)

    async def accept_binding(self, envelope: common_pb2.SignedEnvelope, binding_id: str) -> CallResult:
        """Send a signed acceptance as is (resending the same bytes is a replay at the gateway)."""
        request = relations_pb2.AcceptBindingRequest(acceptance=envelope)
        try:
            response = await self._relations.AcceptBinding(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return CallResult(subject_id=binding_id, status=status_from_error(error))
        return await self._call_result(binding_id, response.receipt, response.replay, envelope.payload)

    async def dissolve_binding(self, envelope: common_pb2.SignedEnvelope, binding_id: str) -> CallResult:
        request = relations_pb2.DissolveBindingRequest(dissolution=envelope)
        try:
            response = await self._relations.DissolveBinding(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return CallResult(subject_id=binding_id, status=status_from_error(error))
        return await self._call_result(binding_id, response.receipt, response.replay, envelope.payload)

    async def report_member_change(self, envelope: common_pb2.SignedEnvelope, message_id: str) -> CallResult:
        request = relations_pb2.ReportMemberChangeRequest(change=envelope)
        try:
            response = await self._relations.ReportMemberChange(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return CallResult(subject_id=message_id, status=status_from_error(error))
        return await self._call_result(message_id, response.receipt, response.replay, envelope.payload)

    async def get_binding(self, binding_id: str) -> BindingQueryResult:
        request = relations_pb2.GetBindingRequest(query=self.binding_query_envelope(binding_id))
        try:
            response = await self._relations.GetBinding(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return BindingQueryResult(status=status_from_error(error))
        return BindingQueryResult(status=OK, response=response)

    # --- settlement (gongji.v1.Settlements) ---

    async def acknowledge_settlement(self, envelope: common_pb2.SignedEnvelope, window_id: str) -> CallResult:
        request = settlements_pb2.AcknowledgeSettlementRequest(acknowledgement=envelope)
        try:
            response = await self._settlements.AcknowledgeSettlement(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return CallResult(subject_id=window_id, status=status_from_error(error))
        return await self._call_result(window_id, response.receipt, response.replay, envelope.payload)

    async def get_settlement(self, window_id: str) -> SettlementQueryResult:
        request = settlements_pb2.GetSettlementRequest(query=self.settlement_query_envelope(window_id))
        try:
            response = await self._settlements.GetSettlement(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return SettlementQueryResult(status=status_from_error(error))
        return SettlementQueryResult(status=OK, response=response)
