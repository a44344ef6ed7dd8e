"""The status table: which gRPC status each domain error is sent with, as a rich status carrying ErrorInfo."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.domain import errors

ERROR_DOMAIN = "gongji.v1"

STATUS_BY_ERROR: dict[type[errors.GongjiError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RequestInFlight: grpc.StatusCode.ABORTED,
    errors.Contention: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_code_for(error: errors.GongjiError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def rich_status(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> grpc.Status:
    """A status carrying a google.rpc.ErrorInfo detail (domain gongji.v1, a stable reason)."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[detail]))


def status_for(error: Exception) -> grpc.Status:
    if isinstance(error, errors.GongjiError):
        metadata = {}
        if error.field:
            metadata["field"] = error.field
        if error.replay:
            metadata["replay"] = "true"
        return rich_status(status_code_for(error), error.message, error.reason, metadata)
    return rich_status(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL", {})
