"""The payload types a SignedEnvelope names, read from the protobuf descriptors: one table for gateway and stub."""

from __future__ import annotations

from google.protobuf.message import Message

from protos.gongji.v1 import common_pb2, province_pb2, quotas_pb2, relations_pb2, settlements_pb2, transfers_pb2


def payload_type(message: type[Message]) -> str:
    """The name a signed `message` goes by in SignedEnvelope.payload_type (and in the signature input)."""
    return message.DESCRIPTOR.full_name


# Signed by a province, for the gateway.
TRANSFER_INSTRUCTION = payload_type(transfers_pb2.TransferInstruction)
TRANSFER_CONFIRMATION = payload_type(transfers_pb2.TransferConfirmation)
TRANSFER_QUERY = payload_type(transfers_pb2.TransferQuery)
RELATION_QUERY = payload_type(relations_pb2.RelationQuery)
BINDING_PROPOSAL = payload_type(relations_pb2.BindingProposal)
BINDING_ACCEPTANCE = payload_type(relations_pb2.BindingAcceptance)
BINDING_DISSOLUTION = payload_type(relations_pb2.BindingDissolution)
BINDING_QUERY = payload_type(relations_pb2.BindingQuery)
MEMBER_CHANGE = payload_type(relations_pb2.MemberChange)
SETTLEMENT_QUERY = payload_type(settlements_pb2.SettlementQuery)
SETTLEMENT_ACKNOWLEDGEMENT = payload_type(settlements_pb2.SettlementAcknowledgement)
QUOTA_GRANT = payload_type(quotas_pb2.QuotaGrant)
QUOTA_CONSUMPTION = payload_type(quotas_pb2.QuotaConsumption)
CONSUMPTION_REVERSAL = payload_type(quotas_pb2.ConsumptionReversal)
QUOTA_QUERY = payload_type(quotas_pb2.QuotaQuery)

# Signed by the gateway, for a province.
RECEIPT = payload_type(common_pb2.Receipt)
SETTLEMENT_FIGURES = payload_type(settlements_pb2.SettlementFigures)
TRANSFER_DELIVERY = payload_type(province_pb2.TransferDelivery)
CONSENT_REQUEST = payload_type(province_pb2.ConsentRequest)
MEMBER_QUERY = payload_type(province_pb2.MemberQuery)
OUTCOME = payload_type(province_pb2.Outcome)
QUOTA_NOTICE = payload_type(province_pb2.QuotaNotice)
CONSUMPTION_NOTICE = payload_type(province_pb2.ConsumptionNotice)

FROM_PROVINCES: frozenset[str] = frozenset({
    TRANSFER_INSTRUCTION, TRANSFER_CONFIRMATION, TRANSFER_QUERY, RELATION_QUERY, BINDING_PROPOSAL,
    BINDING_ACCEPTANCE, BINDING_DISSOLUTION, BINDING_QUERY, MEMBER_CHANGE, SETTLEMENT_QUERY,
    SETTLEMENT_ACKNOWLEDGEMENT, QUOTA_GRANT, QUOTA_CONSUMPTION, CONSUMPTION_REVERSAL, QUOTA_QUERY})
FROM_GATEWAY: frozenset[str] = frozenset({
    RECEIPT, SETTLEMENT_FIGURES, TRANSFER_DELIVERY, CONSENT_REQUEST, MEMBER_QUERY, OUTCOME, QUOTA_NOTICE,
    CONSUMPTION_NOTICE})
