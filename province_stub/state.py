"""What one stub province holds in memory: its behaviour, credits, outcomes told, and counters."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from protos.gongji.v1 import common_pb2, transfers_pb2
from protos.stub.v1 import control_pb2


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


@dataclass(frozen=True)
class Behaviour:
    """Failure injection and confirmation policy; replaced as a whole by Configure."""

    confirm_mode: ConfirmMode = ConfirmMode.IMMEDIATE
    confirm_delay_ms: int = 0
    fail_next_calls: int = 0
    latency_ms: int = 0
    reject_reason: str = ""

    def to_proto(self) -> control_pb2.Behaviour:
        return control_pb2.Behaviour(
            confirm_mode=_MODE_TO_PROTO[self.confirm_mode],
            confirm_delay_ms=self.confirm_delay_ms,
            fail_next_calls=self.fail_next_calls,
            latency_ms=self.latency_ms,
            reject_reason=self.reject_reason,
        )

    @classmethod
    def from_proto(cls, message: control_pb2.Behaviour) -> Behaviour:
        """Raises ValueError on negative numbers or an unknown mode; UNSPECIFIED means IMMEDIATE."""
        if min(message.confirm_delay_ms, message.fail_next_calls, message.latency_ms) < 0:
            raise ValueError("durations and counts must not be negative")
        if message.confirm_mode == control_pb2.CONFIRM_MODE_UNSPECIFIED:
            mode = ConfirmMode.IMMEDIATE
        elif message.confirm_mode in _PROTO_TO_MODE:
            mode = _PROTO_TO_MODE[message.confirm_mode]
        else:
            raise ValueError(f"unknown confirm mode {message.confirm_mode}")
        return cls(
            confirm_mode=mode,
            confirm_delay_ms=message.confirm_delay_ms,
            fail_next_calls=message.fail_next_calls,
            latency_ms=message.latency_ms,
            reject_reason=message.reject_reason,
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
class Notification:
    """A NotifyOutcome received, de-duplicated by the outcome's message_id."""

    message_id: str
    transfer_id: str
    state: transfers_pb2.TransferState.ValueType
    received_at: float
    times_received: int = 1


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
    deliveries_received: int = 0
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
                )
                for n in self.notifications.values()
            ],
            deliveries_received=self.deliveries_received,
            calls_failed=self.calls_failed,
        )
