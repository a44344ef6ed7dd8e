"""The quota notices a stub province was told (NotifyQuota, NotifyConsumption), each once per message_id."""

from __future__ import annotations

from dataclasses import dataclass, field

from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import common_pb2, province_pb2


@dataclass
class QuotaNoticeRecord:
    """A QuotaNotice received, kept once per message_id."""

    message_id: str
    binding_id: str
    change: province_pb2.QuotaChange.ValueType
    amount_fen: int
    released_fen: int
    version: int
    # The quota's figures after the change, as told.
    granted_fen: int
    consumed_fen: int
    quota_released_fen: int
    available_fen: int
    received_at: float
    times_received: int = 1


@dataclass
class ConsumptionNoticeRecord:
    """A ConsumptionNotice received, kept once per message_id."""

    message_id: str
    binding_id: str
    consumption_id: str
    settlement_ref: str
    change: province_pb2.QuotaChange.ValueType
    amount_fen: int
    released_fen: int
    clearing_window_id: str
    received_at: float
    times_received: int = 1


@dataclass
class QuotaLedger:
    """What this province was told about quotas; touched only from the server's event loop."""

    quota_notices: dict[str, QuotaNoticeRecord] = field(default_factory=dict)
    consumption_notices: dict[str, ConsumptionNoticeRecord] = field(default_factory=dict)

    def record_quota_notice(self, notice: province_pb2.QuotaNotice, received_at: float) -> bool:
        """Keep the notice; False (and counted) when its message_id was told before."""
        message_id = notice.header.message_id
        known = self.quota_notices.get(message_id)
        if known is not None:
            known.times_received += 1
            return False
        self.quota_notices[message_id] = QuotaNoticeRecord(
            message_id=message_id,
            binding_id=notice.binding_id,
            change=notice.change,
            amount_fen=notice.amount_fen,
            released_fen=notice.released_fen,
            version=notice.version,
            granted_fen=notice.quota.granted_fen,
            consumed_fen=notice.quota.consumed_fen,
            quota_released_fen=notice.quota.released_fen,
            available_fen=notice.quota.available_fen,
            received_at=received_at,
        )
        return True

    def record_consumption_notice(self, notice: province_pb2.ConsumptionNotice, received_at: float) -> bool:
        """Keep the notice; False (and counted) when its message_id was told before."""
        message_id = notice.header.message_id
        known = self.consumption_notices.get(message_id)
        if known is not None:
            known.times_received += 1
            return False
        self.consumption_notices[message_id] = ConsumptionNoticeRecord(
            message_id=message_id,
            binding_id=notice.consumption.binding_id,
            consumption_id=notice.consumption.consumption_id,
            settlement_ref=notice.consumption.settlement_ref,
            change=notice.change,
            amount_fen=notice.amount_fen,
            released_fen=notice.released_fen,
            clearing_window_id=notice.clearing_window_id,
            received_at=received_at,
        )
        return True

    def quota_notices_received(self) -> list[control_pb2.QuotaNoticeReceived]:
        return [
            control_pb2.QuotaNoticeReceived(
                message_id=n.message_id, binding_id=n.binding_id, change=n.change, amount_fen=n.amount_fen,
                released_fen=n.released_fen, version=n.version, times_received=n.times_received,
                quota=common_pb2.QuotaFigures(granted_fen=n.granted_fen, consumed_fen=n.consumed_fen,
                                              released_fen=n.quota_released_fen, available_fen=n.available_fen))
            for n in self.quota_notices.values()
        ]

    def consumption_notices_received(self) -> list[control_pb2.ConsumptionNoticeReceived]:
        return [
            control_pb2.ConsumptionNoticeReceived(
                message_id=n.message_id, binding_id=n.binding_id, consumption_id=n.consumption_id,
                settlement_ref=n.settlement_ref, change=n.change, amount_fen=n.amount_fen,
                released_fen=n.released_fen, clearing_window_id=n.clearing_window_id,
                times_received=n.times_received)
            for n in self.consumption_notices.values()
        ]
