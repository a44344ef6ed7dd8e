"""Servicers: proto in -> convert -> one use case -> convert -> proto out. Nothing else happens here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from gateway.api import convert, convert_quotas, operator_views
from gateway.api.transport import operator_actor, province_caller
from gateway.domain.monitoring import FeedStart
from gateway.usecases import binding_reads
from gateway.usecases import bindings as binding_cases
from gateway.usecases import keys as key_cases
from gateway.usecases import monitoring as monitoring_cases
from gateway.usecases import provinces as province_cases
from gateway.usecases import relations as relation_cases
from gateway.usecases import settlements as settlement_cases
from gateway.usecases import transfers as transfer_cases
from gateway.usecases.runner import UseCaseRunner
from gateway.wire import envelope_from_proto, envelope_to_proto
from protos.gongji.v1 import (
    common_pb2,
    keys_pb2,
    keys_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    relations_pb2,
    relations_pb2_grpc,
    settlements_pb2,
    settlements_pb2_grpc,
    transfers_pb2,
    transfers_pb2_grpc,
)

# WatchTransfers' initial metadata: the position its feed starts after (operations.proto).
START_CURSOR_KEY = "gongji-start-cursor"
Context = grpc.aio.ServicerContext[Any, Any]


def peer_identity(context: Context) -> str | None:
    """The province the transport authenticated, or None on a plaintext development port."""
    return province_caller(context)


class TransfersServicer(transfers_pb2_grpc.TransfersServicer):
    def __init__(self, run: UseCaseRunner) -> None:
        self._run = run

    async def SubmitTransfer(self, request: transfers_pb2.SubmitTransferRequest,
                             context: Context) -> transfers_pb2.SubmitTransferResponse:
        answer = await self._run.change(transfer_cases.submit_transfer, envelope_from_proto(request.instruction),
                                        peer_identity(context), convert.decode_instruction)
        return transfers_pb2.SubmitTransferResponse(
            receipt=_envelope(answer.receipt), replay=answer.replay, transfer_id=answer.subject_id,
            state=convert.transfer_state_to_proto(answer.state))

    async def ConfirmTransfer(self, request: transfers_pb2.ConfirmTransferRequest,
                              context: Context) -> transfers_pb2.ConfirmTransferResponse:
        answer = await self._run.change(transfer_cases.confirm_transfer, envelope_from_proto(request.confirmation),
                                        peer_identity(context), convert.decode_confirmation)
        return transfers_pb2.ConfirmTransferResponse(
            receipt=_envelope(answer.receipt), replay=answer.replay,
            state=convert.transfer_state_to_proto(answer.state))

    async def GetTransfer(self, request: transfers_pb2.GetTransferRequest,
                          context: Context) -> transfers_pb2.GetTransferResponse:
        transfer = await self._run.query(transfer_cases.get_transfer, envelope_from_proto(request.query),
                                         peer_identity(context), convert.decode_query)
        return transfers_pb2.GetTransferResponse(transfer=convert.transfer_to_proto(transfer))


class OperationsServicer(operations_pb2_grpc.OperationsServicer):
    def __init__(self, run: UseCaseRunner) -> None:
        self._run = run

    async def RegisterProvince(self, request: operations_pb2.RegisterProvinceRequest,
                               context: Context) -> operations_pb2.RegisterProvinceResponse:
        province = await self._run.change(province_cases.register_province,
                                          convert.province_from_proto(request.province), operator_actor(context))
        return operations_pb2.RegisterProvinceResponse(province=convert.province_to_proto(province))

    async def UpdateProvince(self, request: operations_pb2.UpdateProvinceRequest,
                             context: Context) -> operations_pb2.UpdateProvinceResponse:
        changes = province_cases.ProvinceChanges(
            name=request.name if request.HasField("name") else None,
            endpoint=request.endpoint if request.HasField("endpoint") else None,
            status=convert.province_status_from_proto(request.status),
            add_keys=[convert.key_from_proto(k) for k in request.add_keys],
            retire_key_ids=list(request.retire_key_ids),
            policy=convert.policy_from_proto(request.policy) if request.HasField("policy") else None,
        )
        province = await self._run.change(province_cases.update_province, request.code, changes,
                                          operator_actor(context))
        return operations_pb2.UpdateProvinceResponse(province=convert.province_to_proto(province))

    async def ListProvinces(self, request: operations_pb2.ListProvincesRequest,
                            context: Context) -> operations_pb2.ListProvincesResponse:
        provinces = await self._run.query(province_cases.list_provinces)
        return operations_pb2.ListProvincesResponse(provinces=[convert.province_to_proto(p) for p in provinces])

    async def ListTransfers(self, request: operations_pb2.ListTransfersRequest,
                            context: Context) -> operations_pb2.ListTransfersResponse:
        page = await self._run.query(monitoring_cases.list_transfers, convert.transfer_filter_from_proto(request),
                                     request.page_token, request.page_size,
                                     convert.newest_first_from_proto(request.order))
        return operations_pb2.ListTransfersResponse(
            transfers=[convert.transfer_to_proto(t) for t in page.transfers], next_page_token=page.next_page_token)

    async def InspectTransfer(self, request: operations_pb2.InspectTransferRequest,
                              context: Context) -> operations_pb2.InspectTransferResponse:
        inspection = await self._run.query(monitoring_cases.inspect_transfer, request.transfer_id)
        return operator_views.transfer_inspection_to_proto(inspection)

    async def ListBindings(self, request: operations_pb2.ListBindingsRequest,
                           context: Context) -> operations_pb2.ListBindingsResponse:
        page = await self._run.query(binding_reads.list_bindings, request.province,
                                     operator_views.binding_states_from_proto(request.states), request.page_token,
                                     request.page_size)
        return operator_views.binding_page_to_proto(page)

    async def InspectBinding(self, request: operations_pb2.InspectBindingRequest,
                             context: Context) -> operations_pb2.InspectBindingResponse:
        inspection = await self._run.query(binding_reads.inspect_binding, request.binding_id)
        return operator_views.binding_inspection_to_proto(inspection)

    async def InspectQuota(self, request: operations_pb2.InspectQuotaRequest,
                           context: Context) -> operations_pb2.InspectQuotaResponse:
        inspection = await self._run.query(binding_reads.inspect_quota, request.binding_id, request.page_size,
                                           request.page_token)
        return operator_views.quota_inspection_to_proto(inspection)

    async def WatchTransfers(self, request: operations_pb2.WatchTransfersRequest,
                             context: Context) -> AsyncIterator[operations_pb2.TransferChange]:
        async for item in self._run.stream(monitoring_cases.watch_transfers, request.from_cursor):
            if isinstance(item, FeedStart):
                await context.send_initial_metadata(((START_CURSOR_KEY, str(item.position)),))
            else:
                yield convert.transfer_change_to_proto(item)

    async def GetStats(self, request: operations_pb2.GetStatsRequest,
                       context: Context) -> operations_pb2.GetStatsResponse:
        return convert.stats_to_proto(await self._run.query(monitoring_cases.get_stats))

    async def CloseSettlementWindow(self, request: operations_pb2.CloseSettlementWindowRequest,
                                    context: Context) -> operations_pb2.CloseSettlementWindowResponse:
        window = await self._run.change(settlement_cases.close_window, request.window_id, operator_actor(context),
                                        request.force)
        return operations_pb2.CloseSettlementWindowResponse(window=convert.window_to_proto(window))

    async def RecordSettlementPayment(self, request: operations_pb2.RecordSettlementPaymentRequest,
                                      context: Context) -> operations_pb2.RecordSettlementPaymentResponse:
        payments = [settlement_cases.PaymentInput(p.from_province, p.to_province, p.bank, p.serial_number, p.date)
                    for p in request.payments]
        window = await self._run.change(settlement_cases.record_payment, request.window_id, payments,
                                        operator_actor(context))
        return operations_pb2.RecordSettlementPaymentResponse(window=convert.window_to_proto(window))

    async def GetSettlementWindow(self, request: operations_pb2.GetSettlementWindowRequest,
                                  context: Context) -> operations_pb2.GetSettlementWindowResponse:
        window = await self._run.query(settlement_cases.get_window, request.window_id)
        return operations_pb2.GetSettlementWindowResponse(window=convert.window_to_proto(window))

    async def ListSettlementWindows(self, request: operations_pb2.ListSettlementWindowsRequest,
                                    context: Context) -> operations_pb2.ListSettlementWindowsResponse:
        page = await self._run.query(settlement_cases.list_windows, convert.window_states_from_proto(request.states),
                                     request.page_token, request.page_size,
                                     convert_quotas.window_kind_from_proto(request.kind))
        return operations_pb2.ListSettlementWindowsResponse(
            windows=[convert.window_to_proto(w) for w in page.windows], next_page_token=page.next_page_token)


class RelationsServicer(relations_pb2_grpc.RelationsServicer):
    """Family relations: eligibility and bindings (issue 3); transfers do not yet require a binding."""

    def __init__(self, run: UseCaseRunner) -> None:
        self._run = run

    async def VerifyRelation(self, request: relations_pb2.VerifyRelationRequest,
                             context: Context) -> relations_pb2.VerifyRelationResponse:
        violations = await self._run.orchestrate(relation_cases.verify_relation, envelope_from_proto(request.query),
                                                 peer_identity(context), convert.decode_relation_query)
        return relations_pb2.VerifyRelationResponse(
            eligibility=relations_pb2.ELIGIBILITY_NOT_ELIGIBLE if violations else relations_pb2.ELIGIBILITY_ELIGIBLE,
            violations=[relations_pb2.RuleViolation(reason=v.reason, rule=v.rule, field=v.field) for v in violations])

    async def ProposeBinding(self, request: relations_pb2.ProposeBindingRequest,
                             context: Context) -> relations_pb2.ProposeBindingResponse:
        answer = await self._run.orchestrate(binding_cases.propose_binding, envelope_from_proto(request.proposal),
                                             peer_identity(context), convert.decode_binding_proposal)
        return relations_pb2.ProposeBindingResponse(receipt=_envelope(answer.receipt), replay=answer.replay,
                                                    state=_receipt_binding_state(answer.receipt))

    async def AcceptBinding(self, request: relations_pb2.AcceptBindingRequest,
                            context: Context) -> relations_pb2.AcceptBindingResponse:
        answer = await self._run.change(binding_cases.accept_binding, envelope_from_proto(request.acceptance),
                                        peer_identity(context), convert.decode_binding_acceptance,
                                        convert.decode_binding_proposal)
        return relations_pb2.AcceptBindingResponse(receipt=_envelope(answer.receipt), replay=answer.replay,
                                                   state=_receipt_binding_state(answer.receipt))

    async def DissolveBinding(self, request: relations_pb2.DissolveBindingRequest,
                              context: Context) -> relations_pb2.DissolveBindingResponse:
        answer = await self._run.change(binding_cases.dissolve_binding, envelope_from_proto(request.dissolution),
                                        peer_identity(context), convert.decode_binding_dissolution)
        return relations_pb2.DissolveBindingResponse(receipt=_envelope(answer.receipt), replay=answer.replay,
                                                     state=_receipt_binding_state(answer.receipt))

    async def GetBinding(self, request: relations_pb2.GetBindingRequest,
                         context: Context) -> relations_pb2.GetBindingResponse:
        binding = await self._run.query(binding_cases.get_binding, envelope_from_proto(request.query),
                                        peer_identity(context), convert.decode_binding_query)
        return relations_pb2.GetBindingResponse(binding=convert.binding_to_proto(binding))

    async def ReportMemberChange(self, request: relations_pb2.ReportMemberChangeRequest,
                                 context: Context) -> relations_pb2.ReportMemberChangeResponse:
        receipt, replay = await self._run.change(binding_cases.report_member_change,
                                                 envelope_from_proto(request.change), peer_identity(context),
                                                 convert.decode_member_change)
        envelope = _envelope(receipt)
        affected = common_pb2.Receipt.FromString(envelope.payload).affected_ids
        return relations_pb2.ReportMemberChangeResponse(receipt=envelope, replay=replay,
                                                        affected_binding_ids=list(affected))


def _envelope(receipt: bytes) -> common_pb2.SignedEnvelope:
    return common_pb2.SignedEnvelope.FromString(receipt)


def _receipt_state(receipt: bytes) -> str:
    """The state the signed receipt records (a replayed answer says what the first one said)."""
    return common_pb2.Receipt.FromString(_envelope(receipt).payload).state


def _receipt_binding_state(receipt: bytes) -> relations_pb2.BindingState.ValueType:
    return relations_pb2.BindingState.Value(f"BINDING_STATE_{_receipt_state(receipt)}")


class SettlementsServicer(settlements_pb2_grpc.SettlementsServicer):
    def __init__(self, run: UseCaseRunner) -> None:
        self._run = run

    async def GetSettlement(self, request: settlements_pb2.GetSettlementRequest,
                            context: Context) -> settlements_pb2.GetSettlementResponse:
        view = await self._run.query(settlement_cases.get_settlement, envelope_from_proto(request.query),
                                     peer_identity(context), convert.decode_settlement_query)
        answer = settlements_pb2.GetSettlementResponse(state=convert.window_state_to_proto(view.state),
                                                       acknowledged_by=view.acknowledged_by)
        if view.figures is not None:
            answer.figures.CopyFrom(envelope_to_proto(view.figures))
        return answer

    async def AcknowledgeSettlement(self, request: settlements_pb2.AcknowledgeSettlementRequest,
                                    context: Context) -> settlements_pb2.AcknowledgeSettlementResponse:
        answer = await self._run.change(settlement_cases.acknowledge_settlement,
                                        envelope_from_proto(request.acknowledgement), peer_identity(context),
                                        convert.decode_settlement_acknowledgement)
        state = _receipt_state(answer.receipt)
        return settlements_pb2.AcknowledgeSettlementResponse(
            receipt=_envelope(answer.receipt), replay=answer.replay,
            state=settlements_pb2.SettlementWindowState.Value(f"SETTLEMENT_WINDOW_STATE_{state}"))


class GatewayKeysServicer(keys_pb2_grpc.GatewayKeysServicer):
    """The gateway's public keys, current and retiring, for provinces verifying what it signs."""

    def __init__(self, run: UseCaseRunner) -> None:
        self._run = run

    async def ListGatewayKeys(self, request: keys_pb2.ListGatewayKeysRequest,
                              context: Context) -> keys_pb2.ListGatewayKeysResponse:
        keys = await self._run.query(key_cases.gateway_keys)
        return keys_pb2.ListGatewayKeysResponse(keys=[convert.gateway_key_to_proto(k) for k in keys])
