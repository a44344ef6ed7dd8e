"""Refusing a call: a status with a stable reason in ErrorInfo, and the checks on a gateway message's header."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from protos.gongji.v1 import common_pb2
from province_stub.client import STATUS_DETAILS_KEY
from province_stub.signing import GATEWAY_SIGNER

ERROR_DOMAIN = "gongji.v1"
DEFAULT_MAX_CLOCK_SKEW_S = 120.0


async def refuse(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, reason: str, message: str,
                 field: str = "") -> NoReturn:
    """End the call with `code` and a google.rpc.ErrorInfo naming `reason` (and the offending field)."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata={"field": field} if field else {})
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    await context.abort(code, message, ((STATUS_DETAILS_KEY, status.SerializeToString()),))
    raise AssertionError("unreachable: abort raises")  # for type checkers that do not know abort never returns


@dataclass(frozen=True)
class HeaderCheck:
    """What a province checks in the header of a message the gateway signed, once the signature verified.

    Addressed to this province (a genuine message meant for another one, replayed here, is refused), sent
    by the gateway, and, where the gateway signs it at each attempt, made within `max_skew_s` of our clock
    (a message recorded and replayed later is refused, even one never seen here).
    """

    province: str
    now: Callable[[], float]
    max_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S

    async def check(self, header: common_pb2.Header, context: grpc.aio.ServicerContext[Any, Any], *,
                    fresh: bool = True) -> None:
        if header.receiver != self.province:
            await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "WRONG_RECEIVER",
                         "the message is addressed to another province", "header.receiver")
        if header.sender != GATEWAY_SIGNER:
            await refuse(context, grpc.StatusCode.PERMISSION_DENIED, "SENDER_NOT_SIGNER",
                         "header.sender is not the gateway that signed the message", "header.sender")
        if fresh and abs(header.created_at.ToNanoseconds() / 1e9 - self.now()) > self.max_skew_s:
            await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "STALE_MESSAGE",
                         "header.created_at is outside the accepted window around the province's clock",
                         "header.created_at")
