"""Conversions shared by the inbound API and the outbound province client: envelopes and timestamps."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.domain.envelope import Envelope
from protos.gongji.v1 import common_pb2


def envelope_from_proto(message: common_pb2.SignedEnvelope) -> Envelope:
    return Envelope(payload=message.payload, payload_type=message.payload_type, signer=message.signer,
                    key_id=message.key_id, alg=message.alg, signature=message.signature)


def envelope_to_proto(envelope: Envelope) -> common_pb2.SignedEnvelope:
    return common_pb2.SignedEnvelope(payload=envelope.payload, payload_type=envelope.payload_type,
                                     signer=envelope.signer, key_id=envelope.key_id, alg=envelope.alg,
                                     signature=envelope.signature)


def timestamp(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at.astimezone(UTC))
    return ts


def from_timestamp(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)
