"""The inbox's quota notices (NotifyQuota, NotifyConsumption): checked as every gateway message, kept once."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc.aio
from google.protobuf import message as protobuf_message

from protos.gongji.v1 import common_pb2, payload_types, province_pb2
from province_stub.refusals import HeaderCheck, refuse
from province_stub.state import StubState

logger = logging.getLogger(__name__)

_Message = TypeVar("_Message", province_pb2.QuotaNotice, province_pb2.ConsumptionNotice)
# The inbox's own steps, shared with its other calls: the behaviour in force, the gateway's signature.
Context = grpc.aio.ServicerContext[Any, Any]
ApplyBehaviour = Callable[[Context], Awaitable[None]]
VerifyGateway = Callable[[common_pb2.SignedEnvelope, str, Context], Awaitable[None]]


class QuotaNoticeInbox:
    """Verifies a notice (gateway signature, addressed here, fresh), keeps it once per message_id, answers OK."""

    def __init__(self, state: StubState, header_check: HeaderCheck, apply_behaviour: ApplyBehaviour,
                 verify_gateway: VerifyGateway) -> None:
        self._state = state
        self._header_check = header_check
        self._apply_behaviour = apply_behaviour
        self._verify_gateway = verify_gateway

    async def _checked(self, envelope: common_pb2.SignedEnvelope, payload_type: str, message: _Message,
                       context: Context) -> _Message:
        await self._apply_behaviour(context)
        if self._state.take_quota_notice_failure():
            await refuse(context, "FAILURE_INJECTED", "quota notices refused on purpose by the stub")
        await self._verify_gateway(envelope, payload_type, context)
        try:
            message.ParseFromString(envelope.payload)
        except protobuf_message.DecodeError:
            await refuse(context, "MALFORMED_MESSAGE", "notice payload does not parse", "payload")
        # The gateway signs each attempt anew: a notice meant for another province, or recorded and replayed
        # late, is refused.
        await self._header_check.check(message.header, context)
        return message

    async def notify_quota(self, request: province_pb2.NotifyQuotaRequest,
                           context: Context) -> province_pb2.NotifyQuotaResponse:
        notice = await self._checked(request.notice, payload_types.QUOTA_NOTICE, province_pb2.QuotaNotice(), context)
        if self._state.quota.record_quota_notice(notice, time.time()):
            logger.debug("quota notice %s binding=%s change=%d amount_fen=%d released_fen=%d",
                         notice.header.message_id, notice.binding_id, notice.change, notice.amount_fen,
                         notice.released_fen)
        return province_pb2.NotifyQuotaResponse()

    async def notify_consumption(self, request: province_pb2.NotifyConsumptionRequest,
                                 context: Context) -> province_pb2.NotifyConsumptionResponse:
        notice = await self._checked(request.notice, payload_types.CONSUMPTION_NOTICE,
                                     province_pb2.ConsumptionNotice(), context)
        if self._state.quota.record_consumption_notice(notice, time.time()):
            logger.debug("consumption notice %s binding=%s change=%d amount_fen=%d released_fen=%d",
                         notice.header.message_id, notice.consumption.binding_id, notice.change,
                         notice.amount_fen, notice.released_fen)
        return province_pb2.NotifyConsumptionResponse()
