"""What the gateway owes provinces: one message type per kind, their message ids, and the queued message."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from gateway.domain.bindings import BindingState
from gateway.domain.transfers import TransferState


class OutboxKind(enum.Enum):
    DELIVER_TRANSFER = "DELIVER_TRANSFER"
    NOTIFY_TRANSFER_OUTCOME = "NOTIFY_TRANSFER_OUTCOME"
    REQUEST_CONSENT = "REQUEST_CONSENT"
    NOTIFY_BINDING_OUTCOME = "NOTIFY_BINDING_OUTCOME"
    NOTIFY_SETTLEMENT = "NOTIFY_SETTLEMENT"
    NOTIFY_QUOTA = "NOTIFY_QUOTA"
    NOTIFY_CONSUMPTION = "NOTIFY_CONSUMPTION"


@dataclass(frozen=True, slots=True)
class DeliverTransfer:
    """The giver province's instruction, to the receiver's province, with the gateway's delivery."""

    kind: ClassVar[OutboxKind] = OutboxKind.DELIVER_TRANSFER


@dataclass(frozen=True, slots=True)
class NotifyTransferOutcome:
    """A transfer's final state and its reason, to each of its two provinces."""

    state: TransferState
    reason: str = ""
    kind: ClassVar[OutboxKind] = OutboxKind.NOTIFY_TRANSFER_OUTCOME


@dataclass(frozen=True, slots=True)
class RequestConsent:
    """The giver province's proposal, to the receiver's province, for the receiver's consent."""

    kind: ClassVar[OutboxKind] = OutboxKind.REQUEST_CONSENT


@dataclass(frozen=True, slots=True)
class NotifyBindingOutcome:
    """A binding's new state and its reason, to each of its two provinces (the time is the message's own)."""

    state: BindingState
    reason: str = ""
    kind: ClassVar[OutboxKind] = OutboxKind.NOTIFY_BINDING_OUTCOME


@dataclass(frozen=True, slots=True)
class NotifySettlement:
    """A closed window's figures, as the gateway signed them for one province."""

    kind: ClassVar[OutboxKind] = OutboxKind.NOTIFY_SETTLEMENT


@dataclass(frozen=True, slots=True)
class NotifyQuota:
    """A change of a quota's figures (its version), to the receiver's province, and to the giver's for a release."""

    version: int
    kind: ClassVar[OutboxKind] = OutboxKind.NOTIFY_QUOTA


@dataclass(frozen=True, slots=True)
class NotifyConsumption:
    """A consumption or a reversal (the quota's version it made), to the giver's province (Q6)."""

    version: int
    kind: ClassVar[OutboxKind] = OutboxKind.NOTIFY_CONSUMPTION


OutboxContent = (DeliverTransfer | NotifyTransferOutcome | RequestConsent | NotifyBindingOutcome | NotifySettlement
                 | NotifyQuota | NotifyConsumption)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A queued message: where it goes, what it tells, its message id (provinces de-duplicate on it), the
    transfer, binding or window it is about, and the attempts made to send it."""

    id: int
    destination: str
    content: OutboxContent
    message_id: str
    subject_id: str
    attempts: int
    created_at: datetime

    @property
    def kind(self) -> OutboxKind:
        return self.content.kind


class OutboxStatus(enum.Enum):
    PENDING = "PENDING"  # to be sent (again) until acknowledged
    DONE = "DONE"  # acknowledged by the province
    EXPIRED = "EXPIRED"  # abandoned: its transfer's delivery deadline passed


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A message owed to a province as it stands, for operators: its attempts, last error and next try."""

    destination: str
    content: OutboxContent
    message_id: str
    status: OutboxStatus
    attempts: int
    last_error: str
    next_attempt_at: datetime  # while PENDING: when it is due (a message in flight: when its lease ends)
    created_at: datetime
    done_at: datetime | None  # when acknowledged or abandoned


# Message ids: what provinces de-duplicate on (api.md, "Transfer states"): the same message, the same id.

def delivery_message_id(transfer_id: str) -> str:
    return f"dlv:{transfer_id}"


def transfer_outcome_message_id(transfer_id: str, state: TransferState) -> str:
    return f"out:{transfer_id}:{state.value}"


def consent_message_id(binding_id: str) -> str:
    return f"csn:{binding_id}"


def binding_outcome_message_id(binding_id: str, state: BindingState, at: datetime) -> str:
    # The time makes each change its own message: a binding may go ACTIVE -> SUSPENDED -> ACTIVE.
    return f"bout:{binding_id}:{state.value}:{at.timestamp():.6f}"


def settlement_message_id(window_id: str, province: str) -> str:
    return f"stl:{window_id}:{province}"


def quota_notice_message_id(binding_id: str, version: int) -> str:
    return f"qn:{binding_id}:{version}"


def consumption_notice_message_id(receiver_province: str, consumption_id: str) -> str:
    # The province too: a consumption's id is its province's message id, unique per province only.
    return f"cn:{receiver_province}:{consumption_id}"


def reversal_notice_message_id(receiver_province: str, message_id: str) -> str:
    return f"cr:{receiver_province}:{message_id}"
