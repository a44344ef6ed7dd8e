"""The payload types on the wire: one table read from the descriptors, the names unchanged, a decoder for each."""

from __future__ import annotations

from gateway.api import convert, convert_quotas
from gateway.api.strict import Decoder
from protos.gongji.v1 import payload_types

# The names provinces sign today (each is part of every signature input): the table must keep them.
ON_THE_WIRE = {
    "TRANSFER_INSTRUCTION": "gongji.v1.TransferInstruction",
    "TRANSFER_CONFIRMATION": "gongji.v1.TransferConfirmation",
    "TRANSFER_QUERY": "gongji.v1.TransferQuery",
    "RELATION_QUERY": "gongji.v1.RelationQuery",
    "BINDING_PROPOSAL": "gongji.v1.BindingProposal",
    "BINDING_ACCEPTANCE": "gongji.v1.BindingAcceptance",
    "BINDING_DISSOLUTION": "gongji.v1.BindingDissolution",
    "BINDING_QUERY": "gongji.v1.BindingQuery",
    "MEMBER_CHANGE": "gongji.v1.MemberChange",
    "SETTLEMENT_QUERY": "gongji.v1.SettlementQuery",
    "SETTLEMENT_ACKNOWLEDGEMENT": "gongji.v1.SettlementAcknowledgement",
    "RECEIPT": "gongji.v1.Receipt",
    "SETTLEMENT_FIGURES": "gongji.v1.SettlementFigures",
    "TRANSFER_DELIVERY": "gongji.v1.TransferDelivery",
    "CONSENT_REQUEST": "gongji.v1.ConsentRequest",
    "MEMBER_QUERY": "gongji.v1.MemberQuery",
    "OUTCOME": "gongji.v1.Outcome",
    "QUOTA_GRANT": "gongji.v1.QuotaGrant",
    "QUOTA_CONSUMPTION": "gongji.v1.QuotaConsumption",
    "CONSUMPTION_REVERSAL": "gongji.v1.ConsumptionReversal",
    "QUOTA_QUERY": "gongji.v1.QuotaQuery",
    "QUOTA_NOTICE": "gongji.v1.QuotaNotice",
    "CONSUMPTION_NOTICE": "gongji.v1.ConsumptionNotice",
}


def test_the_table_keeps_every_name_on_the_wire() -> None:
    assert {name: getattr(payload_types, name) for name in ON_THE_WIRE} == ON_THE_WIRE
    assert set(ON_THE_WIRE.values()) == payload_types.FROM_PROVINCES | payload_types.FROM_GATEWAY
    assert not payload_types.FROM_PROVINCES & payload_types.FROM_GATEWAY


def test_each_message_a_province_signs_has_one_decoder_named_by_its_type() -> None:
    decoders = [value for module in (convert, convert_quotas) for value in vars(module).values()
                if isinstance(value, Decoder)]
    names = [d.type_name for d in decoders]
    assert sorted(names) == sorted(payload_types.FROM_PROVINCES)
