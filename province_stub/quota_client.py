"""The province's calls to gongji.v1.Quotas: each message signed once, sent with a deadline, resent as is."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc.aio

from protos.gongji.v1 import common_pb2, payload_types, quotas_pb2, quotas_pb2_grpc
from province_stub.answers import OK, RESEND_CODES, GatewayStatus, fetch_and_read_receipt, status_from_error
from province_stub.gateway_keys import GatewayKeyDirectory
from province_stub.messages import ProvinceSigner, header, new_message_id
from province_stub.signing import GATEWAY_SIGNER

DEFAULT_DEADLINE_S = 5.0
# A call that may not have reached the gateway is sent again, the same bytes (a replay there), a few times.
RESEND_ATTEMPTS = 3
RESEND_BACKOFF_S = 0.2


# Digits become letters: a reference holding digits may, once in a few thousand, hold what looks like an ID
# number, which the gateway refuses (REFERENCE_LOOKS_LIKE_ID_NUMBER, D19).
_NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


def _opaque() -> str:
    return uuid.uuid4().hex.translate(_NO_DIGITS)


def new_settlement_ref() -> str:
    """Opaque and unique per province: [A-Za-z0-9._:-], 35 characters, no digit."""
    return f"ST:{_opaque()}"


def new_freeze_ref() -> str:
    return f"FZ:{_opaque()}"


@dataclass(frozen=True)
class QuotaCallResult:
    """The gateway's answer to a receipted Quotas call, reduced to what a province keeps."""

    message_id: str
    status: GatewayStatus
    quota: common_pb2.QuotaFigures | None = None
    replay: bool = False
    receipt_verified: bool = False
    drawn_fen: int = 0
    clearing_window_id: str = ""
    consumption: quotas_pb2.ConsumptionRecord | None = None


@dataclass(frozen=True)
class QuotaQueryResult:
    """The gateway's answer to GetQuota; `response` is set only when the status is OK."""

    status: GatewayStatus
    response: quotas_pb2.GetQuotaResponse | None = None


class QuotaClient:
    """Signs as one province (its ProvinceSigner) and calls gongji.v1.Quotas; gRPC errors never escape."""

    def __init__(self, channel: grpc.aio.Channel, signer: ProvinceSigner, gateway_keys: GatewayKeyDirectory, *,
                 deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self._signer = signer
        self._gateway_keys = gateway_keys
        self._deadline_s = deadline_s
        self._quotas = quotas_pb2_grpc.QuotasStub(channel)

    def _header(self, message_id: str) -> common_pb2.Header:
        return header(message_id, self._signer.province, GATEWAY_SIGNER)

    def grant_envelope(self, message_id: str, binding_id: str, giver: common_pb2.PersonRef, quota_fen: int,
                       freeze_ref: str) -> common_pb2.SignedEnvelope:
        grant = quotas_pb2.QuotaGrant(header=self._header(message_id), binding_id=binding_id, giver=giver,
                                      quota_fen=quota_fen, freeze_ref=freeze_ref)
        return self._signer.sign(payload_types.QUOTA_GRANT, grant.SerializeToString())

    def consumption_envelope(self, message_id: str, consumption: quotas_pb2.QuotaConsumption
                             ) -> common_pb2.SignedEnvelope:
        consumption.header.CopyFrom(self._header(message_id))
        return self._signer.sign(payload_types.QUOTA_CONSUMPTION, consumption.SerializeToString())

    def reversal_envelope(self, message_id: str, binding_id: str, settlement_ref: str, amount_fen: int,
                          reason: str) -> common_pb2.SignedEnvelope:
        reversal = quotas_pb2.ConsumptionReversal(header=self._header(message_id), binding_id=binding_id,
                                                  settlement_ref=settlement_ref, amount_fen=amount_fen, reason=reason)
        return self._signer.sign(payload_types.CONSUMPTION_REVERSAL, reversal.SerializeToString())

    async def _send(self, call: Callable[..., Awaitable[Any]], request: Any) -> Any:
        """The answer, or the last AioRpcError once a resend cannot help (or the attempts are spent)."""
        for attempt in range(1, RESEND_ATTEMPTS + 1):
            try:
                return await call(request, timeout=self._deadline_s)
            except grpc.aio.AioRpcError as error:
                if error.code().name not in RESEND_CODES or attempt == RESEND_ATTEMPTS:
                    return error
                await asyncio.sleep(RESEND_BACKOFF_S * attempt)
        raise AssertionError("unreachable")

    async def _receipted(self, message_id: str, envelope: common_pb2.SignedEnvelope, answer: Any,
                         **extra: Any) -> QuotaCallResult:
        if isinstance(answer, grpc.aio.AioRpcError):
            return QuotaCallResult(message_id=message_id, status=status_from_error(answer))
        receipt = await fetch_and_read_receipt(self._gateway_keys, answer.receipt, envelope.payload)
        return QuotaCallResult(message_id=message_id, status=OK, quota=answer.quota, replay=answer.replay,
                               receipt_verified=receipt is not None, **extra)

    async def grant(self, message_id: str, envelope: common_pb2.SignedEnvelope) -> QuotaCallResult:
        answer = await self._send(self._quotas.GrantQuota, quotas_pb2.GrantQuotaRequest(grant=envelope))
        return await self._receipted(message_id, envelope, answer)

    async def consume(self, message_id: str, envelope: common_pb2.SignedEnvelope) -> QuotaCallResult:
        answer = await self._send(self._quotas.ConsumeQuota, quotas_pb2.ConsumeQuotaRequest(consumption=envelope))
        if isinstance(answer, grpc.aio.AioRpcError):
            return await self._receipted(message_id, envelope, answer)
        return await self._receipted(message_id, envelope, answer, drawn_fen=answer.drawn_fen,
                                     clearing_window_id=answer.clearing_window_id)

    async def reverse(self, message_id: str, envelope: common_pb2.SignedEnvelope) -> QuotaCallResult:
        answer = await self._send(self._quotas.ReverseConsumption,
                                  quotas_pb2.ReverseConsumptionRequest(reversal=envelope))
        if isinstance(answer, grpc.aio.AioRpcError):
            return await self._receipted(message_id, envelope, answer)
        return await self._receipted(message_id, envelope, answer, consumption=answer.consumption,
                                     clearing_window_id=answer.clearing_window_id)

    async def get_quota(self, binding_id: str, page_size: int = 0, page_token: str = "") -> QuotaQueryResult:
        query = quotas_pb2.QuotaQuery(header=self._header(new_message_id("qq")), binding_id=binding_id,
                                      page_size=page_size, page_token=page_token)
        envelope = self._signer.sign(payload_types.QUOTA_QUERY, query.SerializeToString())
        try:
            response = await self._quotas.GetQuota(quotas_pb2.GetQuotaRequest(query=envelope),
                                                   timeout=self._deadline_s)
        except grpc.aio.AioRpcError as error:
            return QuotaQueryResult(status=status_from_error(error))
        return QuotaQueryResult(status=OK, response=response)
