"""What one stub province holds in memory: behaviour, credits, consent requests, outcomes told, counters."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import common_pb2, relations_pb2, transfers_pb2
from province_stub.quota_ledger import QuotaLedger


class ConfirmMode(enum.Enum):
    """How accepted deliveries are confirmed to the gateway."""

    IMMEDIATE = "immediate"
    DELAY = "delay"
    NEVER = "never"
    DECLINE = "decline"


_MODE_TO_PROTO = {
    ConfirmMode.IMMEDIATE: control_pb2.CONFIRM_MODE_IMMEDIATE,
    ConfirmMode.DELAY: control_pb2.CONFIRM_MODE_DELAY,
    ConfirmMode.NEVER: control_pb2.CONFIRM_MODE_NEVER,
    ConfirmMode.DECLINE: control_pb2.CONFIRM_MODE_DECLINE,
}
_PROTO_TO_MODE = {value: mode for mode, value in _MODE_TO_PROTO.items()}


class ConsentMode(enum.Enum):
    """How consent requests for receivers insured here are answered."""

    # FACE at 16 or over on today's Beijing date, else GUARDIAN_DOCUMENT.
    ACCEPT = "accept"
    FACE = "face"
    GUARDIAN = "guardian"
    REFUSE = "refuse"
    NEVER = "never"


_CONSENT_TO_PROTO = {
    ConsentMode.ACCEPT: control_pb2.CONSENT_MODE_ACCEPT,
    ConsentMode.FACE: control_pb2.CONSENT_MODE_ACCEPT_FACE,
    ConsentMode.GUARDIAN: control_pb2.CONSENT_MODE_ACCEPT_GUARDIAN,
    ConsentMode.REFUSE: control_pb2.CONSENT_MODE_REFUSE,
    ConsentMode.NEVER: control_pb2.CONSENT_MODE_NEVER,
}
_PROTO_TO_CONSENT = {value: mode for mode, value in _CONSENT_TO_PROTO.items()}


def consent_mode_from_proto(value: control_pb2.ConsentMode.ValueType) -> ConsentMode:
    """UNSPECIFIED means ACCEPT; raises ValueError on an unknown value."""
    if value == control_pb2.CONSENT_MODE_UNSPECIFIED:
        return ConsentMode.ACCEPT
    mode = _PROTO_TO_CONSENT.get(value)
    if mode is None:
        raise ValueError(f"unknown consent mode {value}")
    return mode


class SettlementAckMode(enum.Enum):
    """Whether settlement figures are acknowledged as soon as they arrive."""

    AUTO = "auto"
    MANUAL = "manual"


_ACK_TO_PROTO = {
    SettlementAckMode.AUTO: control_pb2.SETTLEMENT_ACK_MODE_AUTO,
    SettlementAckMode.MANUAL: control_pb2.SETTLEMENT_ACK_MODE_MANUAL,
}
_PROTO_TO_ACK = {value: mode for mode, value in _ACK_TO_PROTO.items()}


@dataclass(frozen=True)
class Behaviour:
    """Failure injection, confirmation and consent policy; replaced as a whole by Configure."""

    confirm_mode: ConfirmMode = ConfirmMode.IMMEDIATE
    confirm_delay_ms: int = 0
    fail_next_calls: int = 0
    latency_ms: int = 0
    reject_reason: str = ""
    consent_mode: ConsentMode = ConsentMode.ACCEPT
    settlement_ack_mode: SettlementAckMode = SettlementAckMode.AUTO
    fail_next_quota_notices: int = 0
    refuse_quota_notices: bool = False

    def to_proto(self) -> control_pb2.Behaviour:
        return control_pb2.Behaviour(
            confirm_mode=_MODE_TO_PROTO[self.confirm_mode],
            confirm_delay_ms=self.confirm_delay_ms,
            fail_next_calls=self.fail_next_calls,
            latency_ms=self.latency_ms,
            reject_reason=self.reject_reason,
            consent_mode=_CONSENT_TO_PROTO[self.consent_mode],
            settlement_ack_mode=_ACK_TO_PROTO[self.settlement_ack_mode],
            fail_next_quota_notices=self.fail_next_quota_notices,
            refuse_quota_notices=self.refuse_quota_notices,
        )

    @classmethod
    def from_proto(cls, message: control_pb2.Behaviour) -> Behaviour:
        """Raises ValueError on negative numbers or an unknown mode; UNSPECIFIED means IMMEDIATE / ACCEPT."""
        if min(message.confirm_delay_ms, message.fail_next_calls, message.latency_ms,
               message.fail_next_quota_notices) < 0:
            raise ValueError("durations and counts must not be negative")
        if message.confirm_mode == control_pb2.CONFIRM_MODE_UNSPECIFIED:
            mode = ConfirmMode.IMMEDIATE
        elif message.confirm_mode in _PROTO_TO_MODE:
            mode = _PROTO_TO_MODE[message.confirm_mode]
        else:
            raise ValueError(f"unknown confirm mode {message.confirm_mode}")
        if message.settlement_ack_mode == control_pb2.SETTLEMENT_ACK_MODE_UNSPECIFIED:
            ack_mode = SettlementAckMode.AUTO
        elif message.settlement_ack_mode in _PROTO_TO_ACK:
            ack_mode = _PROTO_TO_ACK[message.settlement_ack_mode]
        else:
            raise ValueError(f"unknown settlement ack mode {message.settlement_ack_mode}")
        return cls(
            confirm_mode=mode,
            confirm_delay_ms=message.confirm_delay_ms,
            fail_next_calls=message.fail_next_calls,
            latency_ms=message.latency_ms,
            reject_reason=message.reject_reason,
            consent_mode=consent_mode_from_proto(message.consent_mode),
            settlement_ack_mode=ack_mode,
            fail_next_quota_notices=message.fail_next_quota_notices,
            refuse_quota_notices=message.refuse_quota_notices,
        )


@dataclass
class Credit:
    """A credit held as the receiver's province; status follows the outcomes we are told."""

    transfer_id: str
    amount_fen: int
    instruction_sha256: bytes
    status: str = "PENDING"


@dataclass
class DeliveryAnswer:
    """The decision given for a transfer, replayed on redelivery."""

    instruction_sha256: bytes
    accepted: bool
    reject_reason: str = ""


@dataclass
class ConsentRequestRecord:
    """A binding this province was asked to consent to, kept once per binding id."""

    binding_id: str
    proposal_sha256: bytes
    # Kept to choose the attestation by age; never logged in clear.
    receiver_id_number: str
    giver_province: str
    received_at: float
    times_received: int = 1


@dataclass
class Notification:
    """A NotifyOutcome received, de-duplicated by the outcome's message_id."""

    message_id: str
    # Exactly one of transfer_id / binding_id is set, after the outcome's subject.
    transfer_id: str
    state: transfers_pb2.TransferState.ValueType
    received_at: float
    times_received: int = 1
    binding_id: str = ""
    binding_state: relations_pb2.BindingState.ValueType = relations_pb2.BINDING_STATE_UNSPECIFIED


@dataclass
class SettlementRecord:
    """Settlement figures received for one window (the gateway sends a province one statement per window)."""

    window_id: str
    envelope: common_pb2.SignedEnvelope
    figures_sha256: bytes
    net_fen: int
    times_received: int = 1
    acknowledged_state: str = ""


@dataclass
class SubmittedInstruction:
    """An instruction this stub submitted, kept so it can be resent byte for byte."""

    transfer_id: str
    envelope: common_pb2.SignedEnvelope


# Final transfer states as the local credit status they lead to.
OUTCOME_TO_CREDIT_STATUS = {
    transfers_pb2.TRANSFER_STATE_COMMITTED: "CREDITED",
    transfers_pb2.TRANSFER_STATE_DECLINED: "DECLINED",
    transfers_pb2.TRANSFER_STATE_RETURNED: "RETURNED",
    transfers_pb2.TRANSFER_STATE_REJECTED: "REJECTED",
}


@dataclass
class StubState:
    """All mutable state; touched only from the server's event loop, so no locks are needed."""

    province: str
    behaviour: Behaviour = field(default_factory=Behaviour)
    credits: dict[str, Credit] = field(default_factory=dict)
    answers: dict[str, DeliveryAnswer] = field(default_factory=dict)
    notifications: dict[str, Notification] = field(default_factory=dict)
    submitted: dict[str, SubmittedInstruction] = field(default_factory=dict)
    # By binding id, in order of first arrival.
    consent_requests: dict[str, ConsentRequestRecord] = field(default_factory=dict)
    settlements: dict[str, SettlementRecord] = field(default_factory=dict)
    # Quota notices told, and the personal accounts they move.
    quota: QuotaLedger = field(default_factory=QuotaLedger)
    deliveries_received: int = 0
    consent_requests_received: int = 0
    calls_failed: int = 0

    def take_failure(self) -> bool:
        """Consume one injected failure, if any are left."""
        if self.behaviour.fail_next_calls <= 0:
            return False
        self.behaviour = dataclasses.replace(
            self.behaviour, fail_next_calls=self.behaviour.fail_next_calls - 1
        )
        self.calls_failed += 1
        return True

    def take_quota_notice_failure(self) -> bool:
        """Whether to refuse this quota or consumption notice on purpose (consuming one of a count)."""
        if self.behaviour.refuse_quota_notices:
            self.quota.notices_failed += 1
            return True
        if self.behaviour.fail_next_quota_notices <= 0:
            return False
        self.behaviour = dataclasses.replace(
            self.behaviour, fail_next_quota_notices=self.behaviour.fail_next_quota_notices - 1
        )
        self.quota.notices_failed += 1
        return True

    def snapshot(self) -> control_pb2.SnapshotResponse:
        return control_pb2.SnapshotResponse(
            province=self.province,
            credits=[
                control_pb2.Credit(transfer_id=c.transfer_id, amount_fen=c.amount_fen, status=c.status)
                for c in self.credits.values()
            ],
            notifications=[
                control_pb2.Notification(
                    message_id=n.message_id,
                    transfer_id=n.transfer_id,
                    state=n.state,
                    received_at=n.received_at,
                    times_received=n.times_received,
                    binding_id=n.binding_id,
                    binding_state=n.binding_state,
                )
                for n in self.notifications.values()
            ],
            deliveries_received=self.deliveries_received,
            calls_failed=self.calls_failed,
            consent_requests_received=self.consent_requests_received,
            consent_requests=list(self.consent_requests),
            settlements=[
                control_pb2.SettlementReceived(
                    window_id=r.window_id,
                    figures_sha256=r.figures_sha256,
                    net_fen=r.net_fen,
                    times_received=r.times_received,
                    acknowledged_state=r.acknowledged_state,
                )
                for r in self.settlements.values()
            ],
            quota_notices=self.quota.quota_notices_received(),
            consumption_notices=self.quota.consumption_notices_received(),
        )
