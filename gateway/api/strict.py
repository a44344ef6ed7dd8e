"""Strict decoding of signed payloads: unknown fields refused, each decoder named by its payload type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from google.protobuf import message as pb_message
from google.protobuf.unknown_fields import UnknownFieldSet

from gateway.domain import reasons
from gateway.domain.errors import InvalidArgument
from protos.gongji.v1.payload_types import payload_type

P = TypeVar("P", bound=pb_message.Message)
T = TypeVar("T")


def _has_unknown_fields(message: pb_message.Message) -> bool:
    if len(UnknownFieldSet(message)):
        return True
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.is_repeated:
            if field.message_type.GetOptions().map_entry:
                continue
            if any(_has_unknown_fields(item) for item in value):
                return True
        elif _has_unknown_fields(value):
            return True
    return False


def parse_strict(payload: bytes, message_class: type[P]) -> P:
    """Parse exactly: malformed bytes and fields this contract does not know are refused."""
    message = message_class()
    try:
        message.ParseFromString(payload)
    except pb_message.DecodeError as error:
        raise InvalidArgument("payload does not parse as " + message_class.DESCRIPTOR.full_name,
                              reason=reasons.MALFORMED_PAYLOAD, field="payload") from error
    if _has_unknown_fields(message):
        raise InvalidArgument("payload has fields this contract does not define", reason=reasons.UNKNOWN_FIELDS,
                              field="payload")
    return message


class Decoder(Generic[P, T]):
    """A signed payload's strict decoder, named by the payload_type its envelope must declare.

    The use cases authenticate an envelope against `type_name` before they decode it, and name the type in
    receipts and idempotency keys: they never spell a wire name themselves.
    """

    def __init__(self, message_class: type[P], read: Callable[[P], T]) -> None:
        self.type_name = payload_type(message_class)
        self._message_class = message_class
        self._read = read

    def __call__(self, payload: bytes) -> T:
        return self._read(parse_strict(payload, self._message_class))


def decoder(message_class: type[P]) -> Callable[[Callable[[P], T]], Decoder[P, T]]:
    """Makes a reader of a parsed `message_class` the decoder of its signed payloads."""
    return lambda read: Decoder(message_class, read)
