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
from province_stub.answers import STATUS_DETAILS_KEY
from province_stub.signing import GATEWAY_SIGNER

ERROR_DOMAIN = "gongji.v1"
DEFAULT_MAX_CLOCK_SKEW_S = 120.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """The one status the stub refuses with for a reason, and when it does."""

    code: grpc.StatusCode
    when: str


_INVALID, _DENIED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
_UNAUTHENTICATED, _UNAVAILABLE = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE

# Every reason the stub refuses a call with, its one status and when (docs/errors.md lists them).
REFUSALS: dict[str, Refusal] = {
    "NOT_THE_GATEWAY": Refusal(_DENIED, "a certificate other than the gateway's calls the inbox (mutual TLS)"),
    "NOT_AN_OPERATOR": Refusal(_DENIED, "a certificate other than an operator's calls the control service"),
    "GATEWAY_KEY_UNKNOWN": Refusal(_UNAVAILABLE, "the gateway does not list the key it signed with (yet): the gateway "
                                                 "retries"),
    "BAD_GATEWAY_SIGNATURE": Refusal(_UNAUTHENTICATED, "the gateway's signature does not verify"),
    "MALFORMED_MESSAGE": Refusal(_INVALID, "a signed payload does not parse"),
    "WRONG_RECEIVER": Refusal(_INVALID, "a message from the gateway is addressed to another province"),
    "SENDER_NOT_SIGNER": Refusal(_DENIED, "a message's header.sender is not the gateway that signed it"),
    "STALE_MESSAGE": Refusal(_INVALID, "a message the gateway signs at each attempt is outside the accepted window "
                                       "around the province's clock"),
    "CONSENT_REQUEST_MISMATCH": Refusal(_INVALID, "a consent request does not name the digest and id of the "
                                                  "proposal it carries"),
    "BAD_PROPOSAL_SIGNATURE": Refusal(_UNAUTHENTICATED, "the giver's province's signature on the proposal does not "
                                                        "verify"),
    "FAILURE_INJECTED": Refusal(_UNAVAILABLE, "the stub was told to fail its next calls (StubControl)"),
}


async def refuse(context: grpc.aio.ServicerContext[Any, Any], reason: str, message: str, field: str = "") -> NoReturn:
    """End the call with the status of `reason` (REFUSALS) and a google.rpc.ErrorInfo naming it and the field."""
    code = REFUSALS[reason].code
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
            await refuse(context, "WRONG_RECEIVER",
                         "the message is addressed to another province", "header.receiver")
        if header.sender != GATEWAY_SIGNER:
            await refuse(context, "SENDER_NOT_SIGNER",
                         "header.sender is not the gateway that signed the message", "header.sender")
        if fresh and abs(header.created_at.ToNanoseconds() / 1e9 - self.now()) > self.max_skew_s:
            await refuse(context, "STALE_MESSAGE",
                         "header.created_at is outside the accepted window around the province's clock",
                         "header.created_at")
