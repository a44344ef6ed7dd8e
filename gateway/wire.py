"""Conversions shared by the inbound API and the outbound province client: envelopes, timestamps, quota figures."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.domain.envelope import Envelope
from gateway.domain.quota import Consumption, QuotaBalance
from protos.gongji.v1 import common_pb2, quotas_pb2


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


def quota_figures(balance: QuotaBalance) -> common_pb2.QuotaFigures:
    return common_pb2.QuotaFigures(granted_fen=balance.granted_fen, consumed_fen=balance.consumed_fen,
                                   released_fen=balance.released_fen, available_fen=balance.available_fen)


def consumption_record(consumption: Consumption, reversed_fen: int | None = None) -> quotas_pb2.ConsumptionRecord:
    """A consumption as the wire tells it; `reversed_fen`: as it stood at a given change (a notice), else now."""
    if reversed_fen is not None:
        consumption = dataclasses.replace(consumption, reversed_fen=reversed_fen)
    return quotas_pb2.ConsumptionRecord(
        consumption_id=consumption.consumption_id, binding_id=consumption.binding_id,
        settlement_ref=consumption.settlement_ref,
        kind=quotas_pb2.ConsumptionKind.Value(f"CONSUMPTION_KIND_{consumption.kind.value}"),
        requested_fen=consumption.requested_fen, drawn_fen=consumption.drawn_fen,
        reversed_fen=consumption.reversed_fen,
        state=quotas_pb2.ConsumptionState.Value(f"CONSUMPTION_STATE_{consumption.state}"),
        clearing_window_id=consumption.month, care_pooling_area=consumption.care_pooling_area,
        created_at=timestamp(consumption.created_at))
