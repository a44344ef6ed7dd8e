"""The Quotas service (Q2-Q12): proto in -> convert -> one use case -> convert -> proto out."""

from __future__ import annotations

from gateway.api import convert_quotas as convert
from gateway.api.servicers import Context, peer_identity
from gateway.usecases import quotas as quota_cases
from gateway.usecases.runner import UseCaseRunner
from gateway.wire import envelope_from_proto
from protos.gongji.v1 import quotas_pb2, quotas_pb2_grpc


class QuotasServicer(quotas_pb2_grpc.QuotasServicer):
    def __init__(self, run: UseCaseRunner) -> None:
        self._run = run

    async def GrantQuota(self, request: quotas_pb2.GrantQuotaRequest,
                         context: Context) -> quotas_pb2.GrantQuotaResponse:
        answer = await self._run.change(quota_cases.grant_quota, envelope_from_proto(request.grant),
                                        peer_identity(context), convert.decode_grant)
        return quotas_pb2.GrantQuotaResponse(receipt=convert.receipt_envelope(answer.receipt), replay=answer.replay,
                                             quota=convert.receipt_figures(answer.receipt))

    async def ConsumeQuota(self, request: quotas_pb2.ConsumeQuotaRequest,
                           context: Context) -> quotas_pb2.ConsumeQuotaResponse:
        answer = await self._run.change(quota_cases.consume_quota, envelope_from_proto(request.consumption),
                                        peer_identity(context), convert.decode_consumption)
        return convert.consumption_to_proto(answer)

    async def ReverseConsumption(self, request: quotas_pb2.ReverseConsumptionRequest,
                                 context: Context) -> quotas_pb2.ReverseConsumptionResponse:
        answer = await self._run.change(quota_cases.reverse_consumption, envelope_from_proto(request.reversal),
                                        peer_identity(context), convert.decode_reversal)
        return convert.reversal_to_proto(answer)

    async def GetQuota(self, request: quotas_pb2.GetQuotaRequest, context: Context) -> quotas_pb2.GetQuotaResponse:
        view = await self._run.query(quota_cases.get_quota, envelope_from_proto(request.query),
                                     peer_identity(context), convert.decode_quota_query)
        return convert.quota_view_to_proto(view)
