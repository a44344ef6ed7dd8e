"""Proto <-> domain conversion for the API: strict decoding of signed payloads and views."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from google.protobuf import message as pb_message

from gateway.api.strict import decoder
from gateway.domain import reasons
from gateway.domain.bindings import (
    Attestation,
    Binding,
    BindingAcceptance,
    BindingDissolution,
    BindingProposal,
    BindingQuery,
    BindingState,
    ConsentDecision,
    MemberChange,
    MemberChangeKind,
)
from gateway.domain.eligibility import AttestationMethod
from gateway.domain.envelope import Header
from gateway.domain.errors import InvalidArgument
from gateway.domain.monitoring import Stats, TransferChange, TransferFilter
from gateway.domain.provinces import MutualAidMode, Policy, Province, ProvinceKey, ProvinceStatus
from gateway.domain.relations import RelationQuery
from gateway.domain.settlement import SettlementAcknowledgement, SettlementQuery, SettlementWindow, WindowState
from gateway.domain.transfers import (
    Decision,
    PersonRef,
    Transfer,
    TransferConfirmation,
    TransferInstruction,
    TransferQuery,
    TransferState,
)
from gateway.wire import from_timestamp, quota_figures, timestamp
from protos.gongji.v1 import common_pb2, keys_pb2, operations_pb2, relations_pb2, settlements_pb2, transfers_pb2


def header_from_proto(header: common_pb2.Header, present: bool) -> Header:
    if not present:
        raise InvalidArgument("header is required", reason=reasons.MISSING_FIELD, field="header")
    if not header.HasField("created_at"):
        raise InvalidArgument("header.created_at is required", reason=reasons.MISSING_FIELD, field="header.created_at")
    try:
        created_at = from_timestamp(header.created_at)
    except (ValueError, OverflowError) as error:
        raise InvalidArgument("header.created_at is not a valid time", reason=reasons.INVALID_TIMESTAMP,
                              field="header.created_at") from error
    return Header(header.message_id, header.sender, header.receiver, created_at)


@decoder(transfers_pb2.TransferInstruction)
def decode_instruction(message: transfers_pb2.TransferInstruction) -> TransferInstruction:
    expires_at = None
    if message.HasField("expires_at"):
        try:
            expires_at = from_timestamp(message.expires_at)
        except (ValueError, OverflowError) as error:
            raise InvalidArgument("expires_at is not a valid time", reason=reasons.INVALID_TIMESTAMP,
                                  field="expires_at") from error
    return TransferInstruction(
        header=header_from_proto(message.header, message.HasField("header")),
        giver=PersonRef(message.giver.id_number, message.giver.pooling_area),
        receiver=PersonRef(message.receiver.id_number, message.receiver.pooling_area),
        amount_fen=message.amount_fen, currency=message.currency, expires_at=expires_at,
        binding_id=message.binding_id,
    )


_DECISIONS = {
    transfers_pb2.CONFIRMATION_DECISION_CREDITED: Decision.CREDITED,
    transfers_pb2.CONFIRMATION_DECISION_DECLINED: Decision.DECLINED,
}


@decoder(transfers_pb2.TransferConfirmation)
def decode_confirmation(message: transfers_pb2.TransferConfirmation) -> TransferConfirmation:
    header = header_from_proto(message.header, message.HasField("header"))
    decision = _DECISIONS.get(message.decision)
    if decision is None:
        raise InvalidArgument("decision must be CREDITED or DECLINED",
                              reason=reasons.INVALID_DECISION, field="decision")
    return TransferConfirmation(header, message.transfer_id, decision, message.decline_reason)


@decoder(relations_pb2.RelationQuery)
def decode_relation_query(message: relations_pb2.RelationQuery) -> RelationQuery:
    return RelationQuery(
        header=header_from_proto(message.header, message.HasField("header")),
        giver=PersonRef(message.giver.id_number, message.giver.pooling_area),
        receiver=PersonRef(message.receiver.id_number, message.receiver.pooling_area),
        relation_code=message.relation_code)


def _optional_time(message: pb_message.Message, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    try:
        return from_timestamp(getattr(message, field))
    except (ValueError, OverflowError) as error:
        raise InvalidArgument(f"{field} is not a valid time", reason=reasons.INVALID_TIMESTAMP, field=field) from error


def _person(message: common_pb2.PersonRef) -> PersonRef:
    return PersonRef(message.id_number, message.pooling_area)


@decoder(relations_pb2.BindingProposal)
def decode_binding_proposal(message: relations_pb2.BindingProposal) -> BindingProposal:
    return BindingProposal(
        header=header_from_proto(message.header, message.HasField("header")), giver=_person(message.giver),
        receiver=_person(message.receiver), relation_code=message.relation_code,
        letter_version=message.commitment.letter_version,
        accepted_at=_optional_time(message.commitment, "accepted_at"),
        authorised_amount_fen=message.authorised_amount_fen, consent_by=_optional_time(message, "consent_by"))


_CONSENT = {relations_pb2.CONSENT_DECISION_ACCEPT: ConsentDecision.ACCEPT,
            relations_pb2.CONSENT_DECISION_REFUSE: ConsentDecision.REFUSE}
_ATTESTATION = {relations_pb2.ATTESTATION_METHOD_FACE: AttestationMethod.FACE,
                relations_pb2.ATTESTATION_METHOD_GUARDIAN_DOCUMENT: AttestationMethod.GUARDIAN_DOCUMENT}
_ATTESTATION_TO_PROTO = {v: k for k, v in _ATTESTATION.items()}


@decoder(relations_pb2.BindingAcceptance)
def decode_binding_acceptance(message: relations_pb2.BindingAcceptance) -> BindingAcceptance:
    header = header_from_proto(message.header, message.HasField("header"))
    decision = _CONSENT.get(message.decision)
    if decision is None:
        raise InvalidArgument("decision must be ACCEPT or REFUSE", reason=reasons.INVALID_DECISION, field="decision")
    attestation = None
    if message.HasField("attestation"):
        method = _ATTESTATION.get(message.attestation.method)
        attested_at = _optional_time(message.attestation, "attested_at")
        if method is None:
            raise InvalidArgument("attestation.method must be FACE or GUARDIAN_DOCUMENT",
                                  reason=reasons.INVALID_ATTESTATION,
                                  field="attestation.method")
        if attested_at is None or not message.attestation.evidence_ref:
            raise InvalidArgument("an attestation needs its time and the province's evidence reference (D7)",
                                  reason=reasons.INVALID_ATTESTATION, field="attestation")
        attestation = Attestation(method, message.attestation.evidence_ref, attested_at)
    return BindingAcceptance(header, message.binding_id, decision, attestation)


@decoder(relations_pb2.BindingDissolution)
def decode_binding_dissolution(message: relations_pb2.BindingDissolution) -> BindingDissolution:
    return BindingDissolution(header_from_proto(message.header, message.HasField("header")), message.binding_id,
                              message.reason)


@decoder(relations_pb2.BindingQuery)
def decode_binding_query(message: relations_pb2.BindingQuery) -> BindingQuery:
    return BindingQuery(header_from_proto(message.header, message.HasField("header")), message.binding_id)


_CHANGES = {relations_pb2.MEMBER_CHANGE_KIND_INSURANCE_ENDED: MemberChangeKind.INSURANCE_ENDED,
            relations_pb2.MEMBER_CHANGE_KIND_POOLING_AREA_MOVED: MemberChangeKind.POOLING_AREA_MOVED,
            relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED: MemberChangeKind.SETTLEMENT_SUSPENDED,
            relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_RESUMED: MemberChangeKind.SETTLEMENT_RESUMED}


@decoder(relations_pb2.MemberChange)
def decode_member_change(message: relations_pb2.MemberChange) -> MemberChange:
    kind = _CHANGES.get(message.kind)
    if kind is None:
        raise InvalidArgument("kind must be one of the MemberChangeKind values",
                              reason=reasons.INVALID_KIND, field="kind")
    return MemberChange(header_from_proto(message.header, message.HasField("header")), _person(message.person), kind,
                        _optional_time(message, "effective_at"))


def binding_state_to_proto(state: BindingState) -> relations_pb2.BindingState.ValueType:
    return relations_pb2.BindingState.Value(f"BINDING_STATE_{state.value}")


def binding_to_proto(binding: Binding) -> relations_pb2.BindingView:
    return relations_pb2.BindingView(
        binding_id=binding.binding_id, state=binding_state_to_proto(binding.state),
        giver_province=binding.giver_province, receiver_province=binding.receiver_province,
        giver_id_masked=binding.giver_id_masked, receiver_id_masked=binding.receiver_id_masked,
        relation_code=binding.relation_code, authorised_amount_fen=binding.authorised_amount_fen,
        used_amount_fen=binding.used_amount_fen,
        attestation_method=_ATTESTATION_TO_PROTO.get(binding.attestation_method,  # type: ignore[arg-type]
                                                     relations_pb2.ATTESTATION_METHOD_UNSPECIFIED),
        created_at=timestamp(binding.created_at), updated_at=timestamp(binding.updated_at), reason=binding.reason)


def transfer_filter_from_proto(request: operations_pb2.ListTransfersRequest) -> TransferFilter:
    states = []
    for value in request.states:
        # Enums are open in proto3: any int32 arrives, not only the values the contract names.
        if value == transfers_pb2.TRANSFER_STATE_UNSPECIFIED or value not in transfers_pb2.TransferState.values():
            raise InvalidArgument("states must name transfer states", reason=reasons.INVALID_STATE, field="states")
        states.append(TransferState(transfers_pb2.TransferState.Name(value).removeprefix("TRANSFER_STATE_")))
    return TransferFilter(
        states=tuple(states), giver_province=request.giver_province, receiver_province=request.receiver_province,
        created_from=_optional_time(request, "created_from"), created_to=_optional_time(request, "created_to"))


def newest_first_from_proto(order: int) -> bool:
    """ListTransfers' order: newest first unless OLDEST_FIRST; any other number (proto3 enums are open) is refused."""
    if order in (operations_pb2.TRANSFER_ORDER_UNSPECIFIED, operations_pb2.TRANSFER_ORDER_NEWEST_FIRST):
        return True
    if order == operations_pb2.TRANSFER_ORDER_OLDEST_FIRST:
        return False
    raise InvalidArgument("order must be NEWEST_FIRST or OLDEST_FIRST", reason=reasons.INVALID_ORDER, field="order")


def transfer_change_to_proto(change: TransferChange) -> operations_pb2.TransferChange:
    return operations_pb2.TransferChange(
        cursor=str(change.position), transfer_id=change.transfer_id, state=transfer_state_to_proto(change.state),
        at=timestamp(change.at), reason=change.reason, giver_province=change.giver_province,
        receiver_province=change.receiver_province, amount_fen=change.amount_fen)


def stats_to_proto(stats: Stats) -> operations_pb2.GetStatsResponse:
    answer = operations_pb2.GetStatsResponse(
        transfers=[operations_pb2.TransferStat(giver_province=f.giver_province, receiver_province=f.receiver_province,
                                               state=transfer_state_to_proto(f.state), count=f.count,
                                               amount_fen=f.amount_fen) for f in stats.transfers],
        outbox_backlog=stats.outbox_backlog,
        delivery_failures=[operations_pb2.DeliveryFailures(province=p, failed_attempts=n)
                           for p, n in sorted(stats.failed_attempts_by_province.items())],
        quota_pairs=[operations_pb2.QuotaPairTotals(
            giver_province=q.giver_province, receiver_province=q.receiver_province, totals=quota_figures(q.balance),
            consumption_count=q.consumption_count) for q in stats.quota_pairs])
    if stats.oldest_undelivered is not None:
        answer.oldest_undelivered.CopyFrom(timestamp(stats.oldest_undelivered))
    return answer


@decoder(transfers_pb2.TransferQuery)
def decode_query(message: transfers_pb2.TransferQuery) -> TransferQuery:
    return TransferQuery(header_from_proto(message.header, message.HasField("header")), message.transfer_id)


def transfer_state_to_proto(state: TransferState) -> transfers_pb2.TransferState.ValueType:
    return transfers_pb2.TransferState.Value(f"TRANSFER_STATE_{state.value}")


def transfer_to_proto(transfer: Transfer) -> transfers_pb2.TransferView:
    return transfers_pb2.TransferView(
        transfer_id=transfer.transfer_id, state=transfer_state_to_proto(transfer.state),
        giver_province=transfer.giver_province, receiver_province=transfer.receiver_province,
        giver_id_masked=transfer.giver_id_masked, receiver_id_masked=transfer.receiver_id_masked,
        amount_fen=transfer.amount_fen, currency=transfer.currency, created_at=timestamp(transfer.created_at),
        updated_at=timestamp(transfer.updated_at), return_deadline=timestamp(transfer.return_deadline),
        reason=transfer.reason, instruction_sha256=transfer.instruction_sha256,
        settlement_window_id=transfer.settlement_window_id,
        history=[transfers_pb2.TransferEvent(state=transfer_state_to_proto(e.state), at=timestamp(e.at),
                                             reason=e.reason) for e in transfer.history],
    )


_STATUS_TO_PROTO = {
    ProvinceStatus.ACTIVE: operations_pb2.PROVINCE_STATUS_ACTIVE,
    ProvinceStatus.SUSPENDED: operations_pb2.PROVINCE_STATUS_SUSPENDED,
}
_STATUS_FROM_PROTO = {v: k for k, v in _STATUS_TO_PROTO.items()}


def province_status_from_proto(value: int, field: str = "status") -> ProvinceStatus | None:
    """The status named, or None for UNSPECIFIED; any other number (proto3 enums are open) is refused."""
    if value == operations_pb2.PROVINCE_STATUS_UNSPECIFIED:
        return None
    status = _STATUS_FROM_PROTO.get(value)  # type: ignore[call-overload]
    if status is None:
        raise InvalidArgument("status must be ACTIVE or SUSPENDED", reason=reasons.INVALID_STATUS, field=field)
    return status  # type: ignore[no-any-return]


def _mode_from_proto(value: int) -> MutualAidMode | None:
    """UNSPECIFIED: the default (BOTH); a number the contract does not name is refused."""
    if value == operations_pb2.MUTUAL_AID_MODE_UNSPECIFIED:
        return None
    name = {int(number): name for name, number in operations_pb2.MutualAidMode.items()}.get(value, "")
    if not name:
        raise InvalidArgument("policy.mutual_aid_mode must be TRANSFER, QUOTA or BOTH", reason=reasons.INVALID_POLICY,
                              field="policy.mutual_aid_mode")
    return MutualAidMode(name.removeprefix("MUTUAL_AID_MODE_"))


def policy_from_proto(policy: operations_pb2.ProvincePolicy) -> Policy:
    def opt(name: str) -> int | bool | None:
        return getattr(policy, name) if policy.HasField(name) else None  # type: ignore[arg-type]

    values: dict[str, Any] = {name: opt(name) for name in Policy.__slots__}
    if policy.HasField("mutual_aid_mode"):
        values["mutual_aid_mode"] = _mode_from_proto(policy.mutual_aid_mode)
    return Policy(**values)


def policy_to_proto(policy: Policy) -> operations_pb2.ProvincePolicy:
    values: dict[str, Any] = {name: getattr(policy, name) for name in Policy.__slots__
                              if getattr(policy, name) is not None}
    if policy.mutual_aid_mode is not None:
        mode = f"MUTUAL_AID_MODE_{policy.mutual_aid_mode.value}"
        values["mutual_aid_mode"] = operations_pb2.MutualAidMode.Value(mode)
    return operations_pb2.ProvincePolicy(**values)


def key_from_proto(key: operations_pb2.ProvinceKey) -> ProvinceKey:
    return ProvinceKey(
        key_id=key.key_id, public_key=key.public_key, alg=key.alg or "ed25519",
        valid_from=_optional_time(key, "valid_from"), valid_until=_optional_time(key, "valid_until"),
    )


def key_to_proto(key: ProvinceKey) -> operations_pb2.ProvinceKey:
    message = operations_pb2.ProvinceKey(key_id=key.key_id, alg=key.alg, public_key=key.public_key)
    if key.valid_from:
        message.valid_from.CopyFrom(timestamp(key.valid_from))
    if key.valid_until:
        message.valid_until.CopyFrom(timestamp(key.valid_until))
    return message


def province_from_proto(message: operations_pb2.Province) -> Province:
    status = province_status_from_proto(message.status, "province.status") or ProvinceStatus.ACTIVE
    return Province(code=message.code, name=message.name, endpoint=message.endpoint, status=status,
                    keys=tuple(key_from_proto(k) for k in message.keys), policy=policy_from_proto(message.policy))


def province_to_proto(province: Province) -> operations_pb2.Province:
    message = operations_pb2.Province(
        code=province.code, name=province.name, endpoint=province.endpoint,
        status=_STATUS_TO_PROTO[province.status], keys=[key_to_proto(k) for k in province.keys],
        policy=policy_to_proto(province.policy))
    if province.updated_at:
        message.updated_at.CopyFrom(timestamp(province.updated_at))
    return message


@decoder(settlements_pb2.SettlementQuery)
def decode_settlement_query(message: settlements_pb2.SettlementQuery) -> SettlementQuery:
    return SettlementQuery(header_from_proto(message.header, message.HasField("header")), message.window_id)


@decoder(settlements_pb2.SettlementAcknowledgement)
def decode_settlement_acknowledgement(message: settlements_pb2.SettlementAcknowledgement) -> SettlementAcknowledgement:
    return SettlementAcknowledgement(header_from_proto(message.header, message.HasField("header")),
                                     message.window_id, message.figures_sha256)


def window_state_to_proto(state: WindowState) -> settlements_pb2.SettlementWindowState.ValueType:
    return settlements_pb2.SettlementWindowState.Value(f"SETTLEMENT_WINDOW_STATE_{state.value}")


def window_states_from_proto(values: Iterable[int]) -> list[WindowState]:
    states = []
    for value in values:
        if value not in settlements_pb2.SettlementWindowState.values() or value == 0:
            raise InvalidArgument("states must name settlement window states",
                                  reason=reasons.INVALID_STATE, field="states")
        states.append(WindowState(settlements_pb2.SettlementWindowState.Name(
            value).removeprefix("SETTLEMENT_WINDOW_STATE_")))  # type: ignore[arg-type]
    return states


def window_to_proto(window: SettlementWindow) -> operations_pb2.SettlementWindow:
    answer = operations_pb2.SettlementWindow(
        window_id=window.window_id, state=window_state_to_proto(window.state), opens_at=timestamp(window.opens_at),
        closes_at=timestamp(window.closes_at),
        pairs=[settlements_pb2.PairFigure(from_province=p.from_province, to_province=p.to_province,
                                          gross_fen=p.gross_fen, transfer_count=p.transfer_count)
               for p in window.pairs],
        positions=[settlements_pb2.ProvincePosition(province=p.province, net_fen=p.net_fen)
                   for p in window.positions],
        acknowledged_by=window.acknowledged_by, provinces=window.provinces,
        payments=[operations_pb2.PaymentRecord(from_province=p.from_province, to_province=p.to_province,
                                               bank=p.bank, serial_number=p.serial_number,
                                               date=p.paid_on.isoformat()) for p in window.payments])
    if window.closed_at is not None:
        answer.closed_at.CopyFrom(timestamp(window.closed_at))
    return answer


def gateway_key_to_proto(key: ProvinceKey) -> keys_pb2.GatewayKey:
    """The current key is the one without an end (a newer key gives the others one)."""
    answer = keys_pb2.GatewayKey(key_id=key.key_id, alg=key.alg, public_key=key.public_key,
                                 current=key.valid_until is None)
    if key.valid_from is not None:
        answer.valid_from.CopyFrom(timestamp(key.valid_from))
    if key.valid_until is not None:
        answer.valid_until.CopyFrom(timestamp(key.valid_until))
    return answer
