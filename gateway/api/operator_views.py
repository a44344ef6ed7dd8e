"""Proto views of what operators inspect: the outbox messages about a transfer or binding, a transfer's deadline,
binding pages and filters, a binding's quota."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.api.convert import binding_to_proto, transfer_state_to_proto, transfer_to_proto
from gateway.domain import reasons
from gateway.domain.bindings import BindingState
from gateway.domain.errors import InvalidArgument
from gateway.domain.monitoring import BindingInspection, BindingPage, TransferInspection
from gateway.domain.outbox import NotifyBindingOutcome, NotifyTransferOutcome, OutboxRecord, OutboxStatus
from gateway.usecases.binding_reads import QuotaInspection
from gateway.wire import consumption_record, quota_figures, timestamp
from protos.gongji.v1 import operations_pb2, relations_pb2


def outbox_record_to_proto(record: OutboxRecord) -> operations_pb2.OutboxMessageView:
    content = record.content
    outcome = content.state.value if isinstance(content, NotifyTransferOutcome | NotifyBindingOutcome) else ""
    view = operations_pb2.OutboxMessageView(
        destination=record.destination, kind=operations_pb2.OutboxMessageKind.Value(
            f"OUTBOX_MESSAGE_KIND_{content.kind.value}"),
        message_id=record.message_id,
        status=operations_pb2.OutboxMessageStatus.Value(f"OUTBOX_MESSAGE_STATUS_{record.status.value}"),
        attempts=record.attempts, last_error=record.last_error, created_at=timestamp(record.created_at),
        outcome=outcome)
    if record.status is OutboxStatus.PENDING:
        view.next_attempt_at.CopyFrom(timestamp(record.next_attempt_at))
    if record.done_at is not None:
        view.done_at.CopyFrom(timestamp(record.done_at))
    return view


def transfer_inspection_to_proto(inspection: TransferInspection) -> operations_pb2.InspectTransferResponse:
    answer = operations_pb2.InspectTransferResponse(
        transfer=transfer_to_proto(inspection.transfer),
        messages=[outbox_record_to_proto(m) for m in inspection.messages])
    end = inspection.pending_end
    if end is not None:
        answer.deadline.CopyFrom(operations_pb2.TransferDeadline(state=transfer_state_to_proto(end.state),
                                                                 at=timestamp(end.at), reason=end.reason))
    return answer


def binding_states_from_proto(values: Iterable[int]) -> list[BindingState]:
    states = []
    for value in values:
        # Enums are open in proto3: any int32 arrives, not only the values the contract names.
        if value == relations_pb2.BINDING_STATE_UNSPECIFIED or value not in relations_pb2.BindingState.values():
            raise InvalidArgument("states must name binding states", reason=reasons.INVALID_STATE, field="states")
        states.append(BindingState(relations_pb2.BindingState.Name(value).removeprefix(  # type: ignore[arg-type]
            "BINDING_STATE_")))
    return states


def binding_page_to_proto(page: BindingPage) -> operations_pb2.ListBindingsResponse:
    return operations_pb2.ListBindingsResponse(bindings=[binding_to_proto(b) for b in page.bindings],
                                               next_page_token=page.next_page_token)


def binding_inspection_to_proto(inspection: BindingInspection) -> operations_pb2.InspectBindingResponse:
    binding = inspection.binding
    answer = operations_pb2.InspectBindingResponse(
        binding=binding_to_proto(binding), consent_by=timestamp(binding.consent_by),
        messages=[outbox_record_to_proto(m) for m in inspection.messages])
    if binding.attested_at is not None:
        answer.attested_at.CopyFrom(timestamp(binding.attested_at))
    return answer


def quota_inspection_to_proto(inspection: QuotaInspection) -> operations_pb2.InspectQuotaResponse:
    view = inspection.quota
    return operations_pb2.InspectQuotaResponse(
        binding=binding_to_proto(inspection.binding), quota=quota_figures(view.balance), version=view.version,
        consumptions=[consumption_record(c) for c in view.consumptions], next_page_token=view.next_page_token,
        messages=[outbox_record_to_proto(m) for m in inspection.messages])
