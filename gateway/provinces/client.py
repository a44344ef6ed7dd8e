"""The gateway's client of each province's ProvinceInbox: signed messages, a deadline on every call.

It is also the usecases' MemberDirectory (CheckMember).

grpc.RpcError never leaves this module: every outcome becomes a SendResult.
"""

from __future__ import annotations

import logging
import time
import uuid

import grpc

from gateway.domain.clock import Clock
from gateway.domain.eligibility import MemberStatus
from gateway.domain.envelope import GATEWAY
from gateway.domain.outbox import (
    DeliverTransfer,
    NotifyBindingOutcome,
    NotifyConsumption,
    NotifyQuota,
    NotifySettlement,
    NotifyTransferOutcome,
    RequestConsent,
)
from gateway.domain.provinces import Province
from gateway.domain.transfers import REASON_PATTERN, PersonRef
from gateway.security.signing import EnvelopeSigner
from gateway.security.tls import TlsFiles, province_dns
from gateway.usecases.outbox_ports import OutboxWork, SendResult
from gateway.wire import consumption_record, envelope_to_proto, quota_figures, timestamp
from protos.gongji.v1 import common_pb2, payload_types, province_pb2, province_pb2_grpc, relations_pb2, transfers_pb2

log = logging.getLogger(__name__)

MAX_CACHED_CHANNELS = 64


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    key, cert, ca = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


# A province back after an outage is reached again within about two seconds: gRPC's own reconnection backoff
# grows to 120 s between attempts.
RECONNECT = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
             ("grpc.max_reconnect_backoff_ms", 2000)]


class ProvinceClient:
    def __init__(self, signer: EnvelopeSigner, clock: Clock, call_timeout_seconds: float,
                 tls: TlsFiles | None = None) -> None:
        self._signer = signer
        self._clock = clock
        self._timeout = call_timeout_seconds
        self._tls = tls
        self._credentials = channel_credentials(tls) if tls is not None else None
        self._tls_stamp = tls.stamp() if tls is not None else ()
        self._tls_checked = time.monotonic()
        self._stubs: dict[tuple[str, str], province_pb2_grpc.ProvinceInboxStub] = {}
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}

    def _follow_certificate_files(self) -> None:
        """Replaced certificate files are used from the next connection on (checked once a second)."""
        if self._tls is None or time.monotonic() - self._tls_checked < 1.0:
            return
        self._tls_checked = time.monotonic()
        try:
            stamp = self._tls.stamp()
            if stamp != self._tls_stamp:
                self._credentials, self._tls_stamp = channel_credentials(self._tls), stamp
                self._stubs.clear()
                self._channels.clear()  # closed by garbage collection; in-flight calls finish
        except (OSError, ValueError):
            pass  # being replaced: keep the current ones

    def _stub(self, endpoint: str, province: str) -> province_pb2_grpc.ProvinceInboxStub:
        # Keyed by endpoint, read fresh from the routing table for every message: an endpoint change
        # takes effect on the next call.
        self._follow_certificate_files()
        key = (endpoint, province)
        stub = self._stubs.get(key)
        if stub is None:
            if len(self._channels) >= MAX_CACHED_CHANNELS:
                oldest = next(iter(self._channels))
                self._stubs.pop(oldest, None)
                self._channels.pop(oldest)  # closed by garbage collection; in-flight calls finish
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(endpoint, options=RECONNECT)
            else:
                # The province's certificate must name it: a wrong endpoint cannot receive its messages.
                channel = grpc.aio.secure_channel(endpoint, self._credentials, options=[
                    *RECONNECT, ("grpc.ssl_target_name_override", province_dns(province))])
            self._channels[key] = channel
            stub = self._stubs[key] = province_pb2_grpc.ProvinceInboxStub(channel)
        return stub

    def _header(self, message_id: str, receiver: str) -> common_pb2.Header:
        return common_pb2.Header(message_id=message_id, sender=GATEWAY, receiver=receiver,
                                 created_at=timestamp(self._clock.now()))

    def _sign(self, payload_type: str, payload: bytes) -> common_pb2.SignedEnvelope:
        return envelope_to_proto(self._signer.sign(payload_type, payload))

    async def send(self, work: OutboxWork) -> SendResult:
        if not work.destination_active:
            return SendResult.failed("PROVINCE_SUSPENDED")
        try:
            return await self._call(work)
        except grpc.aio.AioRpcError as error:
            return SendResult.failed(error.code().name)
        except Exception:  # a bug must not kill the outbox loop; the message is retried
            log.exception("sending outbox message %s failed unexpectedly", work.message.id)
            return SendResult.failed("INTERNAL")

    async def _call(self, work: OutboxWork) -> SendResult:
        """The one place where each kind of outbox message meets the ProvinceInbox RPC that carries it."""
        stub, timeout = self._stub(work.endpoint, work.message.destination), self._timeout
        match work.message.content:
            case DeliverTransfer():
                answer = await stub.DeliverTransfer(self._delivery(work), timeout=timeout)  # type: ignore[misc]
                return self._delivery_result(answer)
            case NotifyTransferOutcome() as told:
                await stub.NotifyOutcome(self._transfer_outcome(work, told), timeout=timeout)  # type: ignore[misc]
            case RequestConsent():
                await stub.RequestConsent(self._consent_request(work), timeout=timeout)  # type: ignore[misc]
            case NotifyBindingOutcome() as told:
                await stub.NotifyOutcome(self._binding_outcome(work, told), timeout=timeout)  # type: ignore[misc]
            case NotifySettlement():
                await stub.NotifySettlement(self._settlement(work), timeout=timeout)  # type: ignore[misc]
            case NotifyQuota():
                await stub.NotifyQuota(self._quota_notice(work), timeout=timeout)  # type: ignore[misc]
            case NotifyConsumption():
                await stub.NotifyConsumption(self._consumption_notice(work), timeout=timeout)  # type: ignore[misc]
        return SendResult(acknowledged=True)

    def _delivery(self, work: OutboxWork) -> province_pb2.DeliverTransferRequest:
        transfer, message = work.transfer, work.message
        assert work.instruction is not None and transfer is not None
        delivery = province_pb2.TransferDelivery(
            header=self._header(message.message_id, message.destination), transfer_id=transfer.transfer_id,
            instruction_sha256=transfer.instruction_sha256, confirm_by=timestamp(transfer.return_deadline))
        return province_pb2.DeliverTransferRequest(
            instruction=envelope_to_proto(work.instruction),
            delivery=self._sign(payload_types.TRANSFER_DELIVERY, delivery.SerializeToString()))

    @staticmethod
    def _delivery_result(answer: province_pb2.DeliverTransferResponse) -> SendResult:
        if answer.decision == province_pb2.DELIVERY_DECISION_ACCEPTED:
            return SendResult(acknowledged=True)
        if answer.decision == province_pb2.DELIVERY_DECISION_REJECTED:
            # A province's reason is kept only if it is a stable code; free text is not stored.
            reason = answer.reject_reason if REASON_PATTERN.fullmatch(answer.reject_reason or "-") else ""
            return SendResult(acknowledged=True, rejected=True, reason=reason or "REJECTED_BY_RECEIVER")
        return SendResult.failed("NO_DECISION")

    def _transfer_outcome(self, work: OutboxWork, told: NotifyTransferOutcome) -> province_pb2.NotifyOutcomeRequest:
        transfer, message = work.transfer, work.message
        assert transfer is not None
        return self._outcome(province_pb2.Outcome(
            header=self._header(message.message_id, message.destination),
            transfer=province_pb2.TransferOutcome(
                transfer_id=transfer.transfer_id,
                state=transfers_pb2.TransferState.Value(f"TRANSFER_STATE_{told.state.value}"),
                reason=told.reason, amount_fen=transfer.amount_fen, giver_province=transfer.giver_province,
                receiver_province=transfer.receiver_province, decided_at=timestamp(transfer.updated_at))))

    def _binding_outcome(self, work: OutboxWork, told: NotifyBindingOutcome) -> province_pb2.NotifyOutcomeRequest:
        binding, message = work.binding, work.message
        assert binding is not None
        return self._outcome(province_pb2.Outcome(
            header=self._header(message.message_id, message.destination),
            binding=province_pb2.BindingOutcome(
                binding_id=binding.binding_id,
                state=relations_pb2.BindingState.Value(f"BINDING_STATE_{told.state.value}"), reason=told.reason)))

    def _outcome(self, outcome: province_pb2.Outcome) -> province_pb2.NotifyOutcomeRequest:
        return province_pb2.NotifyOutcomeRequest(outcome=self._sign(payload_types.OUTCOME, outcome.SerializeToString()))

    def _consent_request(self, work: OutboxWork) -> province_pb2.RequestConsentRequest:
        binding, message = work.binding, work.message
        assert binding is not None and work.instruction is not None
        consent = province_pb2.ConsentRequest(
            header=self._header(message.message_id, message.destination), binding_id=binding.binding_id,
            proposal_sha256=binding.proposal_sha256, consent_by=timestamp(binding.consent_by))
        return province_pb2.RequestConsentRequest(
            proposal=envelope_to_proto(work.instruction),
            consent_request=self._sign(payload_types.CONSENT_REQUEST, consent.SerializeToString()))

    @staticmethod
    def _settlement(work: OutboxWork) -> province_pb2.NotifySettlementRequest:
        assert work.figures is not None
        # The figures go exactly as signed at closing: the province acknowledges the digest of these bytes.
        return province_pb2.NotifySettlementRequest(figures=envelope_to_proto(work.figures))

    def _quota_notice(self, work: OutboxWork) -> province_pb2.NotifyQuotaRequest:
        event, message = work.quota_event, work.message
        assert event is not None
        notice = province_pb2.QuotaNotice(
            header=self._header(message.message_id, message.destination), binding_id=event.binding_id,
            change=province_pb2.QuotaChange.Value(f"QUOTA_CHANGE_{event.change.value}"), amount_fen=event.amount_fen,
            released_fen=event.released_fen, quota=quota_figures(event.balance), version=event.version,
            cause_id=event.cause_id, changed_at=timestamp(event.at))
        return province_pb2.NotifyQuotaRequest(
            notice=self._sign(payload_types.QUOTA_NOTICE, notice.SerializeToString()))

    def _consumption_notice(self, work: OutboxWork) -> province_pb2.NotifyConsumptionRequest:
        event, consumption, message = work.quota_event, work.consumption, work.message
        assert event is not None and consumption is not None
        notice = province_pb2.ConsumptionNotice(
            header=self._header(message.message_id, message.destination),
            consumption=consumption_record(consumption, event.consumption_reversed_fen),
            change=province_pb2.QuotaChange.Value(f"QUOTA_CHANGE_{event.change.value}"), amount_fen=event.amount_fen,
            released_fen=event.released_fen, clearing_window_id=event.clearing_window_id,
            quota=quota_figures(event.balance))
        return province_pb2.NotifyConsumptionRequest(
            notice=self._sign(payload_types.CONSUMPTION_NOTICE, notice.SerializeToString()))

    async def check_member(self, province: Province, person: PersonRef) -> MemberStatus | None:
        """CheckMember (signed MemberQuery) with a deadline; None when the province cannot answer."""
        query = province_pb2.MemberQuery(
            header=self._header(f"mq:{uuid.uuid4().hex}", province.code),
            person=common_pb2.PersonRef(id_number=person.id_number, pooling_area=person.pooling_area))
        request = province_pb2.CheckMemberRequest(
            query=self._sign(payload_types.MEMBER_QUERY, query.SerializeToString()))
        try:
            answer = await self._stub(province.endpoint, province.code).CheckMember(  # type: ignore[misc]
                request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            log.warning("CheckMember at province %s failed: %s", province.code, error.code().name)
            return None
        if answer.status == province_pb2.MEMBER_STATUS_NOT_FOUND:
            return MemberStatus.not_found()
        return MemberStatus(insutype=answer.insutype, status_normal=answer.status == province_pb2.MEMBER_STATUS_NORMAL,
                            settlement_suspended=answer.settlement_suspended)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        self._stubs.clear()
