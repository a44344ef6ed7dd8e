"""Quota calls signed as a province platform would make them, for the API tests (tests/api/test_quota*.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from protos.gongji.v1 import common_pb2, quotas_pb2, quotas_pb2_grpc
from tests.support import GANSU, GIVER, MOTHER, XINJIANG, Stack, ts, unique_id, unique_ref

PHARMACY = quotas_pb2.CONSUMPTION_KIND_PHARMACY


def quotas(stack: Stack) -> quotas_pb2_grpc.QuotasStub:
    return quotas_pb2_grpc.QuotasStub(stack.channel)


def header(stack: Stack, sender: str, message_id: str | None = None) -> common_pb2.Header:
    return common_pb2.Header(message_id=message_id or unique_id("q"), sender=sender, receiver="gateway",
                             created_at=ts(stack.clock.now()))


def grant_message(stack: Stack, quota_fen: int, binding_id: str | None = None, sender: str = XINJIANG,
                  giver: tuple[str, str] = GIVER) -> quotas_pb2.QuotaGrant:
    return quotas_pb2.QuotaGrant(header=header(stack, sender), binding_id=binding_id or stack.binding_id,
                                 giver=common_pb2.PersonRef(id_number=giver[0], pooling_area=giver[1]),
                                 quota_fen=quota_fen, freeze_ref=unique_ref("frz"))


def send_grant(stack: Stack, message: quotas_pb2.QuotaGrant, signer: str = XINJIANG) -> quotas_pb2.GrantQuotaResponse:
    return quotas(stack).GrantQuota(quotas_pb2.GrantQuotaRequest(grant=stack.sign(message, signer)), timeout=10)


def grant(stack: Stack, quota_fen: int, binding_id: str | None = None) -> quotas_pb2.GrantQuotaResponse:
    return send_grant(stack, grant_message(stack, quota_fen, binding_id))


def consumption_message(stack: Stack, amount_fen: int, binding_id: str | None = None, sender: str = GANSU,
                        person: tuple[str, str] = MOTHER, **overrides: Any) -> quotas_pb2.QuotaConsumption:
    message = quotas_pb2.QuotaConsumption(
        header=header(stack, sender), binding_id=binding_id or stack.binding_id,
        receiver=common_pb2.PersonRef(id_number=person[0], pooling_area=person[1]), amount_fen=amount_fen,
        kind=PHARMACY, settlement_ref=unique_ref("stl"), care_pooling_area="620100", own_account_used_fen=12_000,
        own_account_balance_fen=0)
    for name, value in overrides.items():
        setattr(message, name, value)
    return message


def send_consumption(stack: Stack, message: quotas_pb2.QuotaConsumption,
                     signer: str = GANSU) -> quotas_pb2.ConsumeQuotaResponse:
    return quotas(stack).ConsumeQuota(quotas_pb2.ConsumeQuotaRequest(consumption=stack.sign(message, signer)),
                                      timeout=10)


def consume(stack: Stack, amount_fen: int, binding_id: str | None = None,
            **overrides: Any) -> quotas_pb2.ConsumeQuotaResponse:
    return send_consumption(stack, consumption_message(stack, amount_fen, binding_id, **overrides))


def reversal_message(stack: Stack, settlement_ref: str, amount_fen: int, binding_id: str | None = None,
                     sender: str = GANSU) -> quotas_pb2.ConsumptionReversal:
    return quotas_pb2.ConsumptionReversal(header=header(stack, sender), binding_id=binding_id or stack.binding_id,
                                          settlement_ref=settlement_ref, amount_fen=amount_fen,
                                          reason="DRUG_RETURNED")


def reverse(stack: Stack, settlement_ref: str, amount_fen: int, binding_id: str | None = None,
            signer: str = GANSU) -> quotas_pb2.ReverseConsumptionResponse:
    message = reversal_message(stack, settlement_ref, amount_fen, binding_id, sender=signer)
    return quotas(stack).ReverseConsumption(quotas_pb2.ReverseConsumptionRequest(
        reversal=stack.sign(message, signer)), timeout=10)


def get_quota(stack: Stack, binding_id: str | None = None, signer: str = XINJIANG, page_size: int = 0,
              page_token: str = "") -> quotas_pb2.GetQuotaResponse:
    query = quotas_pb2.QuotaQuery(header=header(stack, signer), binding_id=binding_id or stack.binding_id,
                                  page_size=page_size, page_token=page_token)
    return quotas(stack).GetQuota(quotas_pb2.GetQuotaRequest(query=stack.sign(query, signer)), timeout=10)


def figures(quota: common_pb2.QuotaFigures) -> tuple[int, int, int, int]:
    return quota.granted_fen, quota.consumed_fen, quota.released_fen, quota.available_fen


def rows(stack: Stack, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with stack.gateway.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql), params).all()]


def quota_counts(stack: Stack) -> dict[str, int]:
    """Rows of the quota tables: proof that a refused call stored nothing of its own."""
    return {table: rows(stack, f"SELECT count(*) FROM {table}")[0][0]
            for table in ("quotas", "quota_changes", "consumptions", "consumption_reversals")}
