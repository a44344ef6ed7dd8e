"""Authenticating a signed envelope, in the verification order of api.md, before any state changes."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, TypeVar

from gateway.domain import reasons
from gateway.domain.envelope import ALLOWED_ALGS, GATEWAY, Envelope, Header
from gateway.domain.errors import InvalidArgument, PermissionDenied, Unauthenticated
from gateway.usecases.context import UseCaseContext
from gateway.usecases.idempotency import answered_before, payload_digest
from gateway.usecases.ports import UnitOfWork


class HasHeader(Protocol):
    @property
    def header(self) -> Header: ...


M = TypeVar("M", bound=HasHeader)
M_co = TypeVar("M_co", covariant=True)


class PayloadDecoder(Protocol[M_co]):
    """Reads a signed payload strictly; `type_name` is the payload_type its envelope must declare.

    Given by the API layer, which knows the wire contract: a use case names a payload type only through it.
    """

    @property
    def type_name(self) -> str: ...

    def __call__(self, payload: bytes) -> M_co: ...


def authenticate(
    uow: UnitOfWork,
    envelope: Envelope,
    decode: PayloadDecoder[M],
    peer: str | None,
    now: datetime,
    ctx: UseCaseContext,
) -> M:
    """Verify `envelope` and return its decoded message; raise before anything is stored.

    A message outside the freshness window is refused unless it is an identical resend of one already
    answered (`answered_before`), which the caller's idempotency step then replays.

    The province's rate budget is spent once the call is proven to be its own (signature, then TLS
    caller): forgeries, and genuine envelopes replayed by another province, cost it nothing.
    """
    if envelope.alg not in ALLOWED_ALGS:
        raise Unauthenticated("signature algorithm not allowed", reason=reasons.ALGORITHM_NOT_ALLOWED, field="alg")
    owned = uow.provinces.key_owner(envelope.key_id)
    if owned is None:
        raise Unauthenticated("unknown key_id", reason=reasons.UNKNOWN_KEY, field="key_id")
    owner, key = owned
    if owner != envelope.signer:
        raise Unauthenticated("key_id does not belong to the signer", reason=reasons.KEY_NOT_OWNED_BY_SIGNER,
                              field="key_id")
    if not key.is_valid_at(now):
        raise Unauthenticated("key is not valid now (retired, expired or not yet valid)", reason=reasons.KEY_NOT_ACTIVE,
                              field="key_id")
    if not ctx.verify(envelope, key.public_key):
        raise Unauthenticated("signature does not verify", reason=reasons.BAD_SIGNATURE, field="signature")
    if peer is not None and peer != envelope.signer:
        raise PermissionDenied("the signer is not the authenticated caller (D20)", reason=reasons.SIGNER_NOT_CALLER,
                               field="signer")
    ctx.admit(envelope.signer)
    # The signature covers payload_type, so a genuine envelope of another kind is refused here, before
    # its bytes are read as this RPC's message.
    if envelope.payload_type != decode.type_name:
        raise InvalidArgument(f"payload_type must be {decode.type_name}", reason=reasons.WRONG_PAYLOAD_TYPE,
                              field="payload_type")
    message = decode(envelope.payload)  # raises InvalidArgument: malformed payload or unknown fields
    header = message.header
    if header.sender != envelope.signer:
        raise PermissionDenied("header.sender is not the signer (D20)", reason=reasons.SENDER_NOT_SIGNER,
                               field="header.sender")
    # The window keeps an old message from being executed; a resend of bytes already answered executes
    # nothing, so it passes, and the caller's idempotency step replays it (D15).
    if abs(header.created_at - now) > ctx.max_clock_skew and not answered_before(
            uow, header.sender, header.message_id, envelope.payload_type, payload_digest(envelope.payload)):
        raise InvalidArgument("header.created_at is outside the accepted window around the gateway's clock",
                              reason=reasons.STALE_MESSAGE, field="header.created_at")
    return message


def require_addressed_to_gateway(header: Header, what: str) -> None:
    """A message the gateway itself answers names it as receiver: one meant for someone else is refused."""
    if header.receiver != GATEWAY:
        raise InvalidArgument(f"{what} is addressed to the gateway",
                              reason=reasons.WRONG_RECEIVER, field="header.receiver")
