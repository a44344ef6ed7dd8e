"""The province platform's side towards the gateway: build, sign and send messages, read answers.

Reusable outside the stub (the bench driver signs and submits through it). gRPC errors never escape:
they come back as a status code name and the ErrorInfo reason.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import grpc
import grpc.aio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import message as protobuf_message
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from protos.gongji.v1 import (
    common_pb2,
    payload_types,
    relations_pb2,
    relations_pb2_grpc,
    settlements_pb2,
    settlements_pb2_grpc,
    transfers_pb2,
    transfers_pb2_grpc,
)
from province_stub.gateway_keys import GatewayKeyDirectory
from province_stub.signing import GATEWAY_SIGNER, PublicKeyStore, sha256, sign_envelope, verify_with_store

# The version of the commitment letter (承诺书) the stub's givers accept.
LETTER_VERSION = "2024-01"
DEFAULT_CONSENT_SECONDS = 86400
DEFAULT_DEADLINE_S = 5.0
# Codes after which the same signed bytes are sent again: the call may not have reached the gateway,
# or its answer was lost (a connection cut mid-call can end it with any of these), and a resend is
# safe (the idempotency key answers it once). Anything else is the gateway's final word.
RESEND_CODES = frozenset(
    {"UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL", "RESOURCE_EXHAUSTED"}
)
STATUS_DETAILS_KEY = "grpc-status-details-bin"
_MAX_MESSAGE_ID = 64


def now_timestamp(offset_s: int = 0) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns() + offset_s * 1_000_000_000)
    return ts


def new_transfer_id(province: str) -> str:
    return f"{province}-{uuid.uuid4().hex}"


def new_binding_id(province: str) -> str:
    return f"{province}-b-{uuid.uuid4().hex}"


def new_message_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def header(
    message_id: str, sender: str, receiver: str, created_at: timestamp_pb2.Timestamp | None = None
) -> common_pb2.Header:
    return common_pb2.Header(
        message_id=message_id,
        sender=sender,
        receiver=receiver,
        created_at=created_at if created_at is not None else now_timestamp(),
    )


def build_instruction(
    sender: str,
    transfer_id: str,
    giver: common_pb2.PersonRef,
    receiver: common_pb2.PersonRef,
    receiver_province: str,
    amount_fen: int,
    *,
    binding_id: str = "",
    currency: str = "CNY",
    created_at: timestamp_pb2.Timestamp | None = None,
    expires_at: timestamp_pb2.Timestamp | None = None,
) -> transfers_pb2.TransferInstruction:
    instruction = transfers_pb2.TransferInstruction(
        header=header(transfer_id, sender, receiver_province, created_at),
        giver=giver,
        receiver=receiver,
        amount_fen=amount_fen,
        currency=currency,
        binding_id=binding_id,
    )
    if expires_at is not None:
        instruction.expires_at.CopyFrom(expires_at)
    return instruction


def build_instruction_envelope(
    signer: str,
    key_id: str,
    private_key: Ed25519PrivateKey,
    transfer_id: str,
    giver: common_pb2.PersonRef,
    receiver: common_pb2.PersonRef,
    receiver_province: str,
    amount_fen: int,
    *,
    binding_id: str = "",
    currency: str = "CNY",
    created_at: timestamp_pb2.Timestamp | None = None,
    expires_at: timestamp_pb2.Timestamp | None = None,
) -> common_pb2.SignedEnvelope:
    """A TransferInstruction from province `signer`, serialised once and signed."""
    instruction = build_instruction(
        signer,
        transfer_id,
        giver,
        receiver,
        receiver_province,
        amount_fen,
        binding_id=binding_id,
        currency=currency,
        created_at=created_at,
        expires_at=expires_at,
    )
    return sign_envelope(private_key, signer, key_id, payload_types.TRANSFER_INSTRUCTION,
                         instruction.SerializeToString())


def confirmation_message_id(transfer_id: str, decline: bool) -> str:
    """One id per (transfer, decision), so resending the same decision is an idempotent replay."""
    suffix = ":D" if decline else ":C"
    message_id = f"cfm:{transfer_id}{suffix}"
    if len(message_id) > _MAX_MESSAGE_ID:
        message_id = f"cfm:{hashlib.sha256(transfer_id.encode()).hexdigest()[:40]}{suffix}"
    return message_id


def acceptance_message_id(binding_id: str) -> str:
    """One id per binding: a second, different answer is a modified request the gateway refuses."""
    message_id = f"acc:{binding_id}"
    if len(message_id) > _MAX_MESSAGE_ID:
        message_id = f"acc:{hashlib.sha256(binding_id.encode()).hexdigest()[:40]}"
    return message_id


@dataclass(frozen=True)
class GatewayStatus:
    """How a gateway call ended: status code name ("OK" on success) and ErrorInfo reason."""

    code: str
    reason: str = ""
    message: str = ""
    # The raw google.rpc.Status trailer, so a caller can pass the error on unchanged.
    details_bin: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code == "OK"


OK = GatewayStatus(code="OK")


def status_from_error(error: grpc.aio.AioRpcError) -> GatewayStatus:
    details_bin = b""
    # grpc-stubs type this as the synchronous API's metadata; on grpc.aio it is (key, value) pairs.
    metadata = cast(Iterable[tuple[str, str | bytes]], error.trailing_metadata() or ())
    for key, value in metadata:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            details_bin = value
    return GatewayStatus(
        code=error.code().name,
        reason=error_info_reason(details_bin),
        message=error.details() or "",
        details_bin=details_bin,
    )


def error_info_reason(details_bin: bytes) -> str:
    """The reason of the first google.rpc.ErrorInfo in a serialised google.rpc.Status, or ""."""
    if not details_bin:
        return ""
    status = status_pb2.Status()
    try:
        status.ParseFromString(details_bin)
    except protobuf_message.DecodeError:
        return ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


@dataclass(frozen=True)
class SubmitResult:
    """The gateway's answer to SubmitTransfer, reduced to what a province checks."""

    transfer_id: str
    status: GatewayStatus
    state: transfers_pb2.TransferState.ValueType = transfers_pb2.TRANSFER_STATE_UNSPECIFIED
    replay: bool = False
    receipt_verified: bool = False
    receipt_sha256: str = ""


@dataclass(frozen=True)
class ConfirmResult:
    """The gateway's answer to ConfirmTransfer."""

    transfer_id: str
    status: GatewayStatus
    state: transfers_pb2.TransferState.ValueType = transfers_pb2.TRANSFER_STATE_UNSPECIFIED
    replay: bool = False
    receipt_verified: bool = False


@dataclass(frozen=True)
class QueryResult:
    """The gateway's answer to GetTransfer; `response` is set only when the status is OK."""

    status: GatewayStatus
    response: transfers_pb2.GetTransferResponse | None = None


@dataclass(frozen=True)
class CallResult:
    """The gateway's answer to a receipted Relations call.

    `state` is the receipt's state string (e.g. "PROPOSED"), and is empty unless the receipt's
    signature verified and it binds our request's SHA-256.
    """

    subject_id: str
    status: GatewayStatus
    state: str = ""
    replay: bool = False
    receipt_verified: bool = False


@dataclass(frozen=True)
class SettlementQueryResult:
    """The gateway's answer to GetSettlement; `response` is set only when the status is OK."""

    status: GatewayStatus
    response: settlements_pb2.GetSettlementResponse | None = None


@dataclass(frozen=True)
class BindingQueryResult:
    """The gateway's answer to GetBinding; `response` is set only when the status is OK."""

    status: GatewayStatus
    response: relations_pb2.GetBindingResponse | None = None


def read_receipt(
    keys: PublicKeyStore, receipt: common_pb2.SignedEnvelope, request_payload: bytes
) -> common_pb2.Receipt | None:
    """The receipt if the gateway signed it (its key read from files) and it binds our request's SHA-256.

    For drivers sharing the gateway's keys folder; the stub asks the gateway for its keys instead
    (GatewayClient).
    """
    if verify_with_store(keys, receipt, signer=GATEWAY_SIGNER, payload_type=payload_types.RECEIPT):
        return None
    return _bound_receipt(receipt, request_payload)


async def fetch_and_read_receipt(
    gateway_keys: GatewayKeyDirectory, receipt: common_pb2.SignedEnvelope, request_payload: bytes
) -> common_pb2.Receipt | None:
    """The receipt if the gateway signed it with a key it lists and it binds our request's SHA-256.

    The gateway just answered us and will not send this receipt again, so a key id we do not know
    (it rotated its key since we asked) waits for the next question to it we allow ourselves.
    """
    if await gateway_keys.verify(receipt, payload_type=payload_types.RECEIPT, wait_for_refetch=True):
        return None
    return _bound_receipt(receipt, request_payload)


def _bound_receipt(receipt: common_pb2.SignedEnvelope, request_payload: bytes) -> common_pb2.Receipt | None:
    parsed = common_pb2.Receipt()
    try:
        parsed.ParseFromString(receipt.payload)
    except protobuf_message.DecodeError:
        return None
    if parsed.request_sha256 != sha256(request_payload):
        return None
    return parsed


def _state_of(
    answered: transfers_pb2.TransferState.ValueType, receipt: common_pb2.Receipt | None
) -> transfers_pb2.TransferState.ValueType:
    if answered != transfers_pb2.TRANSFER_STATE_UNSPECIFIED or receipt is None:
        return answered
    try:
        return transfers_pb2.TransferState.Value(receipt.state)
    except ValueError:
        return answered


class GatewayClient:
    """Signs as one province and calls gongji.v1.Transfers and Relations, with a deadline on every call."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        province: str,
        key_id: str,
        private_key: Ed25519PrivateKey,
        gateway_keys: GatewayKeyDirectory,
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
    ) -> None:
        self.province = province
        self.key_id = key_id
        self._private_key = private_key
        self._gateway_keys = gateway_keys
        self._deadline_s = deadline_s
        self._transfers = transfers_pb2_grpc.TransfersStub(channel)
        self._relations = relations_pb2_grpc.RelationsStub(channel)
        self._settlements = settlements_pb2_grpc.SettlementsStub(channel)

    def sign(self, payload_type: str, payload: bytes) -> common_pb2.SignedEnvelope:
        return sign_envelope(self._private_key, self.province, self.key_id, payload_type, payload)

    def instruction_envelope(
        self,
        transfer_id: str,
        giver: common_pb2.PersonRef,
        receiver: common_pb2.PersonRef,
        receiver_province: str,
        amount_fen: int,
        *,
        binding_id: str = "",
    ) -> common_pb2.SignedEnvelope:
        return build_instruction_envelope(
            self.province,
            self.key_id,
            self._private_key,
            transfer_id,
            giver,
            receiver,
            receiver_province,
            amount_fen,
            binding_id=binding_id,
        )

    def confirmation_envelope(
        self, transfer_id: str, decline: bool, decline_reason: str = ""
    ) -> common_pb2.SignedEnvelope:
        confirmation = transfers_pb2.TransferConfirmation(
            header=header(confirmation_message_id(transfer_id, decline), self.province, GATEWAY_SIGNER),
            transfer_id=transfer_id,
            decision=(
                transfers_pb2.CONFIRMATION_DECISION_DECLINED
                if decline
                else transfers_pb2.CONFIRMATION_DECISION_CREDITED
            ),
            decline_reason=decline_reason if decline else "",
        )
        return self.sign(payload_types.TRANSFER_CONFIRMATION, confirmation.SerializeToString())

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
            state=_state_of(response.state, receipt),
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
            state=_state_of(response.state, receipt),
            replay=response.replay,
            receipt_verified=receipt is not None,
        )

    async def get_transfer(self, transfer_id: str) -> QueryResult:
        query = transfers_pb2.TransferQuery(
            header=header(f"qry-{uuid.uuid4().hex}", self.province, GATEWAY_SIGNER),
            transfer_id=transfer_id,
        )
        request = transfers_pb2.GetTransferRequest(
            query=self.sign(payload_types.TRANSFER_QUERY, query.SerializeToString()))
        try:
            response = await self._transfers.GetTransfer(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return QueryResult(status=status_from_error(error))
        return QueryResult(status=OK, response=response)

    # --- bindings (gongji.v1.Relations) ---

    def proposal_envelope(
        self,
        binding_id: str,
        giver: common_pb2.PersonRef,
        receiver: common_pb2.PersonRef,
        receiver_province: str,
        relation_code: str,
        *,
        authorised_amount_fen: int = 0,
        consent_seconds: int = DEFAULT_CONSENT_SECONDS,
    ) -> common_pb2.SignedEnvelope:
        """A BindingProposal whose message_id is the binding id, addressed to the receiver's province."""
        now = now_timestamp()
        proposal = relations_pb2.BindingProposal(
            header=header(binding_id, self.province, receiver_province, now),
            giver=giver,
            receiver=receiver,
            relation_code=relation_code,
            commitment=relations_pb2.Commitment(letter_version=LETTER_VERSION, accepted_at=now),
            authorised_amount_fen=authorised_amount_fen,
            consent_by=now_timestamp(consent_seconds),
        )
        return self.sign(payload_types.BINDING_PROPOSAL, proposal.SerializeToString())

    def acceptance_envelope(
        self,
        binding_id: str,
        decision: relations_pb2.ConsentDecision.ValueType,
        attestation: relations_pb2.Attestation | None = None,
    ) -> common_pb2.SignedEnvelope:
        acceptance = relations_pb2.BindingAcceptance(
            header=header(acceptance_message_id(binding_id), self.province, GATEWAY_SIGNER),
            binding_id=binding_id,
            decision=decision,
        )
        if attestation is not None:
            acceptance.attestation.CopyFrom(attestation)
        return self.sign(payload_types.BINDING_ACCEPTANCE, acceptance.SerializeToString())

    def dissolution_envelope(self, message_id: str, binding_id: str, reason: str) -> common_pb2.SignedEnvelope:
        dissolution = relations_pb2.BindingDissolution(
            header=header(message_id, self.province, GATEWAY_SIGNER), binding_id=binding_id, reason=reason
        )
        return self.sign(payload_types.BINDING_DISSOLUTION, dissolution.SerializeToString())

    def member_change_envelope(
        self, message_id: str, person: common_pb2.PersonRef, kind: relations_pb2.MemberChangeKind.ValueType
    ) -> common_pb2.SignedEnvelope:
        change = relations_pb2.MemberChange(
            header=header(message_id, self.province, GATEWAY_SIGNER),
            person=person,
            kind=kind,
            effective_at=now_timestamp(),
        )
        return self.sign(payload_types.MEMBER_CHANGE, change.SerializeToString())

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
        query = relations_pb2.BindingQuery(
            header=header(new_message_id("qry"), self.province, GATEWAY_SIGNER), binding_id=binding_id
        )
        request = relations_pb2.GetBindingRequest(
            query=self.sign(payload_types.BINDING_QUERY, query.SerializeToString()))
        try:
            response = await self._relations.GetBinding(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return BindingQueryResult(status=status_from_error(error))
        return BindingQueryResult(status=OK, response=response)

    def acknowledgement_envelope(self, window_id: str, figures_sha256: bytes) -> common_pb2.SignedEnvelope:
        # A fresh message id each time: a resend of these same bytes is a replay at the gateway.
        message_id = new_message_id("ack")
        acknowledgement = settlements_pb2.SettlementAcknowledgement(
            header=header(message_id, self.province, GATEWAY_SIGNER), window_id=window_id,
            figures_sha256=figures_sha256,
        )
        return self.sign(payload_types.SETTLEMENT_ACKNOWLEDGEMENT, acknowledgement.SerializeToString())

    async def acknowledge_settlement(self, envelope: common_pb2.SignedEnvelope, window_id: str) -> CallResult:
        request = settlements_pb2.AcknowledgeSettlementRequest(acknowledgement=envelope)
        try:
            response = await self._settlements.AcknowledgeSettlement(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return CallResult(subject_id=window_id, status=status_from_error(error))
        return await self._call_result(window_id, response.receipt, response.replay, envelope.payload)

    async def get_settlement(self, window_id: str) -> SettlementQueryResult:
        query = settlements_pb2.SettlementQuery(
            header=header(new_message_id("sq"), self.province, GATEWAY_SIGNER), window_id=window_id
        )
        request = settlements_pb2.GetSettlementRequest(
            query=self.sign(payload_types.SETTLEMENT_QUERY, query.SerializeToString())
        )
        try:
            response = await self._settlements.GetSettlement(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return SettlementQueryResult(status=status_from_error(error))
        return SettlementQueryResult(status=OK, response=response)
