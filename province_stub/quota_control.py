"""The control calls of the quota regime: accounts, grants after a freeze, bills own account first, the ledger."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import grpc

from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import common_pb2, quotas_pb2
from province_stub.answers import RESEND_CODES
from province_stub.inbox import Context
from province_stub.messages import new_message_id
from province_stub.people import Seed, mask_id
from province_stub.quota_client import (
    QuotaCallResult,
    QuotaClient,
    QuotaQueryResult,
    new_freeze_ref,
    new_settlement_ref,
)
from province_stub.quota_ledger import Account, Bill, InsufficientBalance
from province_stub.state import StubState

logger = logging.getLogger(__name__)

INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
DEFAULT_REVERSAL_REASON = "DRUG_RETURNED"


def account_view(account: Account) -> control_pb2.AccountView:
    return control_pb2.AccountView(id_number=account.id_number, balance_fen=account.balance_fen,
                                   frozen_fen=account.frozen_fen, debited_fen=account.debited_fen,
                                   available_fen=account.available_fen)


def bill_view(bill: Bill) -> control_pb2.BillView:
    return control_pb2.BillView(settlement_ref=bill.settlement_ref, id_number=bill.id_number,
                                binding_id=bill.binding_id, amount_fen=bill.amount_fen,
                                own_account_fen=bill.own_account_fen, drawn_fen=bill.drawn_fen,
                                reversed_fen=bill.reversed_fen, owed_fen=bill.owed_fen,
                                consumption_id=bill.consumption_id)


def _figures(result: QuotaCallResult) -> common_pb2.QuotaFigures | None:
    return result.quota if result.status.ok else None


class QuotaControl:
    """Drives the province's side of the quota regime for tests and the demo."""

    def __init__(self, state: StubState, seed: Seed, client: QuotaClient) -> None:
        self._state = state
        self._seed = seed
        self._client = client
        # Each grant's signed bytes by message_id, so asking again resends them as they were.
        self._grants: dict[str, common_pb2.SignedEnvelope] = {}
        # One grant at a time per binding: a raise is measured against the freezes of the grants before it,
        # so one of those undone while it is in flight would leave the gateway granting more than is frozen.
        self._grant_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def _person(self, id_number: str) -> common_pb2.PersonRef:
        person = self._seed.find(id_number)
        # Someone not insured here is still sent (pooling area from the ID), for the gateway to judge.
        pooling_area = person.pooling_area if person is not None else id_number[:4] + "00"
        return common_pb2.PersonRef(id_number=id_number.upper(), pooling_area=pooling_area)

    async def set_account(self, request: control_pb2.SetAccountRequest, context: Context) -> control_pb2.AccountView:
        try:
            account = self._state.quota.set_balance(request.id_number, request.balance_fen)
        except ValueError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return account_view(account)

    async def grant_quota(self, request: control_pb2.StubGrantRequest, context: Context
                          ) -> control_pb2.StubGrantResponse:
        ledger = self._state.quota
        given = ledger.given.get(request.binding_id)
        giver_id = given.id_number if given is not None else request.giver_id_number
        if not request.binding_id or not giver_id or request.quota_fen < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "binding_id, giver_id_number and quota_fen >= 0")
        message_id = request.message_id or new_message_id("qg")
        async with self._grant_locks[request.binding_id]:
            return await self._grant(request, giver_id, message_id)

    async def _grant(self, request: control_pb2.StubGrantRequest, giver_id: str, message_id: str
                     ) -> control_pb2.StubGrantResponse:
        ledger = self._state.quota
        try:
            # Frozen before the gateway hears of it: the quota is never more than the province holds.
            freeze = ledger.freeze_for_grant(message_id, request.binding_id, giver_id, request.quota_fen)
        except InsufficientBalance as refused:
            logger.debug("grant %s binding=%s refused here: %s", message_id, request.binding_id, refused)
            return control_pb2.StubGrantResponse(message_id=message_id, code="FAILED_PRECONDITION",
                                                 reason=INSUFFICIENT_BALANCE)
        envelope = self._grants.get(message_id)
        if envelope is None:
            envelope = self._grants[message_id] = self._client.grant_envelope(
                message_id, request.binding_id, self._person(giver_id), request.quota_fen, new_freeze_ref())
        result = await self._client.grant(message_id, envelope)
        # Refused: the freeze goes. No answer (the grant may have been recorded): it stays, and asking again
        # with this message_id resends the same grant.
        if not result.status.ok and result.status.code not in RESEND_CODES:
            ledger.undo_freeze(message_id)
        logger.debug("grant %s binding=%s giver=%s quota_fen=%d froze %d: %s %s", message_id, request.binding_id,
                     mask_id(giver_id), request.quota_fen, freeze.amount_fen, result.status.code,
                     result.status.reason)
        return control_pb2.StubGrantResponse(
            message_id=message_id, code=result.status.code, reason=result.status.reason, sent_to_gateway=True,
            frozen_fen=0 if freeze.undone else freeze.amount_fen, quota=_figures(result), replay=result.replay,
            receipt_verified=result.receipt_verified)

    async def settle_bill(self, request: control_pb2.SettleBillRequest, context: Context
                          ) -> control_pb2.SettleBillResponse:
        ledger = self._state.quota
        settlement_ref = request.settlement_ref or new_settlement_ref()
        if request.amount_fen <= 0 or not request.id_number:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "id_number and amount_fen > 0")
        if settlement_ref in ledger.bills:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "a bill was settled here under that reference")
        receiver = self._person(request.id_number)
        bill = ledger.pay_own_account_first(settlement_ref, receiver.id_number, request.binding_id,
                                            request.amount_fen, skip_own_account=request.skip_own_account)
        rest = request.amount_fen - bill.own_account_fen
        if rest == 0:
            return control_pb2.SettleBillResponse(settlement_ref=settlement_ref,
                                                  own_account_fen=bill.own_account_fen)
        consumption_id = new_message_id("cq")
        bill.consumption_id = consumption_id
        # What the own account paid and what is left on it, truthfully: the gateway checks own account first.
        consumption = quotas_pb2.QuotaConsumption(
            binding_id=request.binding_id, receiver=receiver, amount_fen=rest, allow_partial=request.allow_partial,
            kind=request.kind, settlement_ref=settlement_ref,
            care_pooling_area=request.care_pooling_area or receiver.pooling_area,
            own_account_used_fen=bill.own_account_fen,
            own_account_balance_fen=max(ledger.account(receiver.id_number).available_fen, 0))
        result = await self._client.consume(consumption_id, self._client.consumption_envelope(consumption_id,
                                                                                              consumption))
        if result.status.ok:
            bill.drawn_fen = result.drawn_fen
        logger.debug("bill %s binding=%s person=%s amount_fen=%d own=%d drawn=%d: %s %s", settlement_ref,
                     request.binding_id, mask_id(receiver.id_number), request.amount_fen, bill.own_account_fen,
                     bill.drawn_fen, result.status.code, result.status.reason)
        return control_pb2.SettleBillResponse(
            settlement_ref=settlement_ref, consumption_id=consumption_id, own_account_fen=bill.own_account_fen,
            drawn_fen=bill.drawn_fen, owed_fen=bill.owed_fen, code=result.status.code, reason=result.status.reason,
            quota=_figures(result), clearing_window_id=result.clearing_window_id, replay=result.replay,
            receipt_verified=result.receipt_verified)

    async def reverse_bill(self, request: control_pb2.ReverseBillRequest, context: Context
                           ) -> control_pb2.ReverseBillResponse:
        bill = self._state.quota.bills.get(request.settlement_ref)
        binding_id = request.binding_id or (bill.binding_id if bill is not None else "")
        if not binding_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no bill settled here under that reference")
        message_id = request.message_id or new_message_id("rv")
        envelope = self._client.reversal_envelope(message_id, binding_id, request.settlement_ref, request.amount_fen,
                                                  request.reason or DEFAULT_REVERSAL_REASON)
        result = await self._client.reverse(message_id, envelope)
        if result.status.ok and bill is not None and result.consumption is not None:
            bill.reversed_fen = result.consumption.reversed_fen
        logger.debug("reversal %s of %s amount_fen=%d: %s %s", message_id, request.settlement_ref,
                     request.amount_fen, result.status.code, result.status.reason)
        return control_pb2.ReverseBillResponse(
            message_id=message_id, code=result.status.code, reason=result.status.reason,
            consumption=result.consumption, quota=_figures(result), clearing_window_id=result.clearing_window_id,
            replay=result.replay)

    async def query_quota(self, request: control_pb2.QueryQuotaRequest) -> QuotaQueryResult:
        return await self._client.get_quota(request.binding_id, request.page_size, request.page_token)

    def ledger(self) -> control_pb2.LedgerResponse:
        ledger = self._state.quota
        return control_pb2.LedgerResponse(
            province=self._state.province,
            accounts=[account_view(a) for a in ledger.accounts.values()],
            given=[control_pb2.GivenQuotaView(binding_id=g.binding_id, id_number=g.id_number,
                                              frozen_fen=g.frozen_fen, debited_fen=g.debited_fen,
                                              released_fen=g.released_fen) for g in ledger.given.values()],
            bills=[bill_view(b) for b in ledger.bills.values()],
            quota_notices=ledger.quota_notices_received(),
            consumption_notices=ledger.consumption_notices_received(),
            notices_failed=ledger.notices_failed)
