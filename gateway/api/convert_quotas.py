"""Proto <-> domain conversion of the quota regime: strict decoding of its signed payloads, and its answers."""

from __future__ import annotations

from gateway.api.convert import header_from_proto
from gateway.api.strict import decoder
from gateway.domain.quota import (
    ConsumptionKind,
    ConsumptionReversal,
    QuotaConsumption,
    QuotaGrant,
    QuotaQuery,
)
from gateway.domain.transfers import PersonRef
from gateway.usecases.quotas import ConsumptionAnswer, QuotaView, ReversalAnswer
from gateway.wire import consumption_record, quota_figures
from protos.gongji.v1 import common_pb2, quotas_pb2

_KINDS = {quotas_pb2.CONSUMPTION_KIND_MEDICAL: ConsumptionKind.MEDICAL,
          quotas_pb2.CONSUMPTION_KIND_PHARMACY: ConsumptionKind.PHARMACY,
          quotas_pb2.CONSUMPTION_KIND_RESIDENT_PREMIUM: ConsumptionKind.RESIDENT_PREMIUM,
          quotas_pb2.CONSUMPTION_KIND_LTC_PREMIUM: ConsumptionKind.LTC_PREMIUM}


def _person(message: common_pb2.PersonRef) -> PersonRef:
    return PersonRef(message.id_number, message.pooling_area)


@decoder(quotas_pb2.QuotaGrant)
def decode_grant(message: quotas_pb2.QuotaGrant) -> QuotaGrant:
    return QuotaGrant(header_from_proto(message.header, message.HasField("header")), message.binding_id,
                      _person(message.giver), message.quota_fen, message.freeze_ref)


@decoder(quotas_pb2.QuotaConsumption)
def decode_consumption(message: quotas_pb2.QuotaConsumption) -> QuotaConsumption:
    # A kind the contract does not list (or none) is a stored refusal, KIND_NOT_ALLOWED: the rule's, not the parse's.
    return QuotaConsumption(
        header=header_from_proto(message.header, message.HasField("header")), binding_id=message.binding_id,
        receiver=_person(message.receiver), amount_fen=message.amount_fen, allow_partial=message.allow_partial,
        kind=_KINDS.get(message.kind), settlement_ref=message.settlement_ref,
        care_pooling_area=message.care_pooling_area, own_account_used_fen=message.own_account_used_fen,
        own_account_balance_fen=message.own_account_balance_fen)


@decoder(quotas_pb2.ConsumptionReversal)
def decode_reversal(message: quotas_pb2.ConsumptionReversal) -> ConsumptionReversal:
    return ConsumptionReversal(header_from_proto(message.header, message.HasField("header")), message.binding_id,
                               message.settlement_ref, message.amount_fen, message.reason)


@decoder(quotas_pb2.QuotaQuery)
def decode_quota_query(message: quotas_pb2.QuotaQuery) -> QuotaQuery:
    return QuotaQuery(header_from_proto(message.header, message.HasField("header")), message.binding_id,
                      message.page_size, message.page_token)


def receipt_envelope(receipt: bytes) -> common_pb2.SignedEnvelope:
    return common_pb2.SignedEnvelope.FromString(receipt)


def receipt_figures(receipt: bytes) -> common_pb2.QuotaFigures:
    """The figures a quota receipt states (the answer repeats them, a replay as first given)."""
    return common_pb2.Receipt.FromString(receipt_envelope(receipt).payload).quota


def consumption_to_proto(answer: ConsumptionAnswer) -> quotas_pb2.ConsumeQuotaResponse:
    envelope = receipt_envelope(answer.receipt)
    stated = common_pb2.Receipt.FromString(envelope.payload)
    return quotas_pb2.ConsumeQuotaResponse(receipt=envelope, replay=answer.replay, drawn_fen=stated.drawn_fen,
                                           quota=stated.quota, clearing_window_id=answer.consumption.month)


def reversal_to_proto(answer: ReversalAnswer) -> quotas_pb2.ReverseConsumptionResponse:
    envelope = receipt_envelope(answer.receipt)
    return quotas_pb2.ReverseConsumptionResponse(
        receipt=envelope, replay=answer.replay, consumption=consumption_record(answer.consumption),
        quota=common_pb2.Receipt.FromString(envelope.payload).quota, clearing_window_id=answer.clearing_window_id)


def quota_view_to_proto(view: QuotaView) -> quotas_pb2.GetQuotaResponse:
    return quotas_pb2.GetQuotaResponse(binding_id=view.binding_id, quota=quota_figures(view.balance),
                                       consumptions=[consumption_record(c) for c in view.consumptions],
                                       next_page_token=view.next_page_token)
