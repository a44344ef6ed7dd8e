"""A stub province's side of the quota regime: personal accounts and their freezes, bills, the notices told.

As the giver's province it freezes before granting and moves the freeze as the gateway tells it: a release
unfreezes, a consumption turns freeze into debit, a reversal turns it back (or, after the binding ended,
back to the balance unfrozen). As the receiver's province it pays bills from the person's own account first.
Each notice counts once per message_id, however often it is told.
"""

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


class InsufficientBalance(Exception):
    """A freeze larger than what is left unfrozen on the account: the province refuses it itself."""


@dataclass
class Account:
    """One person's personal account (个人账户) as this province keeps it, whole fen."""

    id_number: str
    # Everything on the account, frozen part included.
    balance_fen: int
    frozen_fen: int = 0
    # Paid out of the freeze for a relative's care (consumptions told, less reversals).
    debited_fen: int = 0

    @property
    def available_fen(self) -> int:
        return self.balance_fen - self.frozen_fen


@dataclass
class GivenQuota:
    """A binding whose quota this province granted, as its giver: what is frozen, debited and released for it.

    Once every notice has arrived: frozen = the gateway's available, debited = consumed, released = released.
    """

    binding_id: str
    id_number: str
    frozen_fen: int = 0
    debited_fen: int = 0
    released_fen: int = 0

    @property
    def quota_fen(self) -> int:
        """The quota as the gateway counts it (granted less released): what a new grant is compared to."""
        return self.frozen_fen + self.debited_fen


@dataclass
class Freeze:
    """The freeze made for one grant request (by its message_id), undone if the gateway refuses the grant."""

    message_id: str
    binding_id: str
    amount_fen: int
    undone: bool = False


@dataclass
class Bill:
    """A point-of-care bill settled here as the receiver's province (by settlement reference)."""

    settlement_ref: str
    id_number: str
    binding_id: str
    amount_fen: int
    own_account_fen: int
    consumption_id: str = ""
    drawn_fen: int = 0
    reversed_fen: int = 0

    @property
    def owed_fen(self) -> int:
        """What the person still pays themselves (the quota refused, or drew only part)."""
        return self.amount_fen - self.own_account_fen - self.drawn_fen


_RELEASES = (province_pb2.QUOTA_CHANGE_LOWERED, province_pb2.QUOTA_CHANGE_RELEASED)


@dataclass
class QuotaLedger:
    """Accounts, freezes, bills and the notices told; touched only from the server's event loop."""

    quota_notices: dict[str, QuotaNoticeRecord] = field(default_factory=dict)
    consumption_notices: dict[str, ConsumptionNoticeRecord] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    given: dict[str, GivenQuota] = field(default_factory=dict)
    freezes: dict[str, Freeze] = field(default_factory=dict)
    bills: dict[str, Bill] = field(default_factory=dict)
    # Notices answered UNAVAILABLE on purpose (Behaviour), before any check.
    notices_failed: int = 0

    # --- accounts ---

    def account(self, id_number: str) -> Account:
        """The person's account (an empty one for someone without a balance yet)."""
        key = id_number.upper()
        account = self.accounts.get(key)
        if account is None:
            account = self.accounts[key] = Account(id_number=key, balance_fen=0)
        return account

    def set_balance(self, id_number: str, balance_fen: int) -> Account:
        """Set the balance, frozen part included; ValueError below what is frozen or below zero."""
        account = self.account(id_number)
        if balance_fen < max(account.frozen_fen, 0):
            raise ValueError("the balance cannot go below what is frozen (or below zero)")
        account.balance_fen = balance_fen
        return account

    # --- the giver's side ---

    def freeze_for_grant(self, message_id: str, binding_id: str, id_number: str, quota_fen: int) -> Freeze:
        """Freeze what raising the binding's quota to quota_fen grants (nothing for a lowering).

        The same request again (its message_id) freezes nothing more, unless its freeze was undone.
        Raises InsufficientBalance, freezing nothing, when the account's unfrozen balance cannot cover it.
        """
        freeze = self.freezes.get(message_id)
        given = self.given.get(binding_id)
        if given is None:
            given = GivenQuota(binding_id=binding_id, id_number=id_number.upper())
        if freeze is None:
            freeze = Freeze(message_id, binding_id, max(quota_fen - given.quota_fen, 0), undone=True)
        if freeze.undone and freeze.amount_fen > 0:
            account = self.account(given.id_number)
            if freeze.amount_fen > account.available_fen:
                raise InsufficientBalance(f"{freeze.amount_fen} fen to freeze, {account.available_fen} unfrozen")
            account.frozen_fen += freeze.amount_fen
            given.frozen_fen += freeze.amount_fen
        freeze.undone = False
        self.given[binding_id] = given
        self.freezes[message_id] = freeze
        return freeze

    def undo_freeze(self, message_id: str) -> None:
        """The gateway refused the grant: the freeze made for it goes."""
        freeze = self.freezes.get(message_id)
        if freeze is None or freeze.undone:
            return
        freeze.undone = True
        given = self.given[freeze.binding_id]
        given.frozen_fen -= freeze.amount_fen
        self.account(given.id_number).frozen_fen -= freeze.amount_fen

    def _apply_quota_notice(self, notice: province_pb2.QuotaNotice) -> None:
        given = self.given.get(notice.binding_id)
        # A reversal's release is applied from its consumption notice, which the giver is always told.
        if given is None or notice.change not in _RELEASES or notice.released_fen <= 0:
            return
        given.frozen_fen -= notice.released_fen
        given.released_fen += notice.released_fen
        self.account(given.id_number).frozen_fen -= notice.released_fen

    def _apply_consumption_notice(self, notice: province_pb2.ConsumptionNotice) -> None:
        given = self.given.get(notice.consumption.binding_id)
        if given is None:
            return
        account = self.account(given.id_number)
        if notice.change == province_pb2.QUOTA_CHANGE_CONSUMED:
            amount, back_to_freeze, released = -notice.amount_fen, -notice.amount_fen, 0
        elif notice.change == province_pb2.QUOTA_CHANGE_REVERSED:
            amount, released = notice.amount_fen, notice.released_fen
            back_to_freeze = amount - released
        else:
            return
        # The debit moves by the amount; the freeze by what is not released to the giver.
        account.balance_fen += amount
        account.debited_fen -= amount
        account.frozen_fen += back_to_freeze
        given.debited_fen -= amount
        given.frozen_fen += back_to_freeze
        given.released_fen += released

    # --- the receiver's side ---

    def pay_own_account_first(self, settlement_ref: str, id_number: str, binding_id: str, amount_fen: int, *,
                              skip_own_account: bool = False) -> Bill:
        """Pay what the person's own account can of the bill (nothing if told to skip it), and keep the bill."""
        account = self.account(id_number)
        own = 0 if skip_own_account else min(max(account.available_fen, 0), amount_fen)
        account.balance_fen -= own
        bill = Bill(settlement_ref, account.id_number, binding_id, amount_fen, own)
        self.bills[settlement_ref] = bill
        return bill

    # --- notices ---

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
        self._apply_quota_notice(notice)
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
        self._apply_consumption_notice(notice)
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
