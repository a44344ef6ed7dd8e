"""How the gateway answered a province: the call's status and reason, the receipt checked, one result per call."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import grpc.aio
from google.protobuf import message as protobuf_message
from google.rpc import error_details_pb2, status_pb2

from protos.gongji.v1 import common_pb2, payload_types, relations_pb2, settlements_pb2, transfers_pb2
from province_stub.gateway_keys import GatewayKeyDirectory
from province_stub.signing import GATEWAY_SIGNER, PublicKeyStore, sha256, verify_with_store

# Codes after which the same signed bytes are sent again: the call may not have reached the gateway,
# or its answer was lost (a connection cut mid-call can end it with any of these), and a resend is
# safe (the idempotency key answers it once). Anything else is the gateway's final word.
RESEND_CODES = frozenset(
    {"UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL", "RESOURCE_EXHAUSTED"}
)
STATUS_DETAILS_KEY = "grpc-status-details-bin"


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


def state_of(
    answered: transfers_pb2.TransferState.ValueType, receipt: common_pb2.Receipt | None
) -> transfers_pb2.TransferState.ValueType:
    """The state the gateway answered, or else the one its verified receipt names."""
    if answered != transfers_pb2.TRANSFER_STATE_UNSPECIFIED or receipt is None:
        return answered
    try:
        return transfers_pb2.TransferState.Value(receipt.state)
    except ValueError:
        return answered
