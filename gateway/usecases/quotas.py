"""Quota use cases (Q2-Q12): grant (giver's province), consume and reverse (receiver's province), read (either).

Each is verified, idempotent and receipted as SubmitTransfer is; each change locks the binding, then its quota.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gateway.domain import reasons
from gateway.domain.bindings import Binding, BindingState, validate_reason
from gateway.domain.clock import BEIJING
from gateway.domain.envelope import Envelope
from gateway.domain.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from gateway.domain.quota import (
    Consumption,
    ConsumptionReversal,
    QuotaBalance,
    QuotaChange,
    QuotaConsumption,
    QuotaEvent,
    QuotaGrant,
    QuotaQuery,
    Reversal,
    check_point_of_care_rules,
    check_reversal,
    draw,
    reverse,
    set_quota,
    validate_consumption,
    validate_grant,
    validate_reversal,
)
from gateway.domain.transfers import validate_message_id
from gateway.usecases.auth import PayloadDecoder, authenticate, require_addressed_to_gateway
from gateway.usecases.bindings import binding_not_found
from gateway.usecases.context import UseCaseContext
from gateway.usecases.idempotency import payload_digest, run_once
from gateway.usecases.monitoring import position_token, token_position
from gateway.usecases.ports import UnitOfWork
from gateway.usecases.provinces import require_active, require_regime
from gateway.usecases.quota_changes import locked_quota, open_clearing_month, record_change

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
ENDED = (BindingState.DISSOLVED, BindingState.EXPIRED, BindingState.REFUSED)


@dataclass(frozen=True, slots=True)
class QuotaAnswer:
    """A state-changing quota call's answer: the signed receipt (serialised envelope) and whether it is a replay.
    The receipt states the figures after the call (and what a consumption drew)."""

    receipt: bytes
    replay: bool


@dataclass(frozen=True, slots=True)
class ConsumptionAnswer:
    receipt: bytes
    replay: bool
    consumption: Consumption  # as it stands now (a replay: as it stands at the resend)


@dataclass(frozen=True, slots=True)
class ReversalAnswer:
    receipt: bytes
    replay: bool
    consumption: Consumption
    clearing_window_id: str


@dataclass(frozen=True, slots=True)
class QuotaView:
    binding_id: str
    balance: QuotaBalance
    version: int
    consumptions: list[Consumption]
    next_page_token: str


def _party_binding(uow: UnitOfWork, binding_id: str, sender: str) -> Binding:
    """NOT_FOUND for an unknown binding and for other provinces' alike (not a stored refusal)."""
    binding = uow.bindings.get(binding_id)
    if binding is None or not binding.has_party(sender):
        raise binding_not_found()
    return binding


def _binding_locked(uow: UnitOfWork, binding_id: str) -> Binding:
    binding = uow.bindings.get(binding_id, lock=True)
    assert binding is not None, "bindings are never deleted"
    return binding


def _both_provinces_allow_quotas(uow: UnitOfWork, binding: Binding) -> None:
    giver = require_active(uow.provinces.get(binding.giver_province), binding.giver_province, "binding_id")
    receiver = require_active(uow.provinces.get(binding.receiver_province), binding.receiver_province, "binding_id")
    require_regime(giver, receiver, quota=True)


def _require_active(binding: Binding) -> None:
    if binding.state is not BindingState.ACTIVE:
        raise FailedPrecondition(f"the binding is {binding.state.value}, not ACTIVE", reason=reasons.BINDING_NOT_ACTIVE,
                                 field="binding_id")


def grant_quota(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                decode: PayloadDecoder[QuotaGrant]) -> QuotaAnswer:
    now = ctx.clock.now()
    with ctx.uow() as uow:
        grant = authenticate(uow, envelope, decode, peer, now, ctx)
        validate_grant(grant, today=now.astimezone(BEIJING).date())
        header = grant.header
        require_addressed_to_gateway(header, "a quota grant")
        binding = _party_binding(uow, grant.binding_id, header.sender)
        if header.sender != binding.giver_province:
            raise PermissionDenied("only the giver's province sets a binding's quota (Q2)",
                                   reason=reasons.NOT_GIVER_PROVINCE, field="header.sender")
        digest = payload_digest(envelope.payload)
        giver_ref = ctx.hasher.ref(grant.giver.id_number)

        def act() -> bytes:
            _both_provinces_allow_quotas(uow, binding)
            locked = _binding_locked(uow, binding.binding_id)
            if locked.giver_ref != giver_ref:
                raise FailedPrecondition("the giver is not the binding's giver", reason=reasons.BINDING_MISMATCH,
                                         field="giver.id_number")
            _require_active(locked)
            quota = locked_quota(uow, locked, now)
            balance, change, size = set_quota(quota.balance, grant.quota_fen)
            if size:  # the quota as it is already: nothing changes, nobody is told
                record_change(uow, quota, QuotaEvent(locked.binding_id, quota.version + 1, change, size,
                                                     size if change is QuotaChange.LOWERED else 0, balance,
                                                     header.message_id, "", "", now))
            return ctx.receipts.issue(request_sender=header.sender, request_message_id=header.message_id,
                                      request_sha256=digest, request_payload_type=decode.type_name,
                                      subject_id=locked.binding_id, state=change.value, at=now, quota=balance)

        with ctx.in_flight.hold(header.sender, header.message_id):
            receipt, replay = run_once(uow, header.sender, header.message_id, decode.type_name, digest, now, act)
    return QuotaAnswer(receipt, replay)


def _lowest_maximum(uow: UnitOfWork, binding: Binding) -> int | None:
    """Q11: the lower of the two provinces' per-consumption maximums, if either sets one."""
    maximums = [p.policy.max_consumption_fen for code in (binding.giver_province, binding.receiver_province)
                if (p := uow.provinces.get(code)) is not None and p.policy.max_consumption_fen is not None]
    return min(maximums) if maximums else None


def _check_consumption(uow: UnitOfWork, consumption: QuotaConsumption, binding: Binding, receiver_ref: bytes) -> None:
    """Q4, Q11, Q12, D3: the rules on the bill, the person and the binding; stored refusals, nothing written."""
    check_point_of_care_rules(consumption)
    if receiver_ref != binding.receiver_ref:
        raise FailedPrecondition("the person treated is not the binding's receiver (Q12)",
                                 reason=reasons.NOT_BINDING_RECEIVER, field="receiver.id_number")
    if role := uow.members.suspended_party(binding.giver_ref, binding.giver_province, binding.receiver_ref,
                                           binding.receiver_province):
        raise FailedPrecondition(f"the {role}'s networked settlement is suspended (D3)",
                                 reason=reasons.SETTLEMENT_SUSPENDED, field="binding_id")
    _require_active(binding)
    maximum = _lowest_maximum(uow, binding)
    if maximum is not None and consumption.amount_fen > maximum:
        raise FailedPrecondition(f"a single consumption is at most {maximum} fen here (Q11)",
                                 reason=reasons.CONSUMPTION_OVER_MAXIMUM, field="amount_fen")


def _duplicate_settlement_ref() -> FailedPrecondition:
    return FailedPrecondition("this settlement_ref is taken by another consumption of the province",
                              reason=reasons.DUPLICATE_SETTLEMENT_REF, field="settlement_ref")


def consume_quota(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                  decode: PayloadDecoder[QuotaConsumption]) -> ConsumptionAnswer:
    now = ctx.clock.now()
    with ctx.uow() as uow:
        consumption = authenticate(uow, envelope, decode, peer, now, ctx)
        validate_consumption(consumption, today=now.astimezone(BEIJING).date())
        header = consumption.header
        require_addressed_to_gateway(header, "a consumption")
        binding = _party_binding(uow, consumption.binding_id, header.sender)
        if header.sender != binding.receiver_province:
            raise PermissionDenied("only the receiver's province draws on a quota (Q4)",
                                   reason=reasons.NOT_RECEIVER_PROVINCE, field="header.sender")
        digest = payload_digest(envelope.payload)
        receiver_ref = ctx.hasher.ref(consumption.receiver.id_number)
        made: list[Consumption] = []

        def act() -> bytes:
            _both_provinces_allow_quotas(uow, binding)
            locked = _binding_locked(uow, binding.binding_id)
            _check_consumption(uow, consumption, locked, receiver_ref)
            assert consumption.kind is not None  # checked: the four kinds only
            if uow.quotas.consumption_by_ref(header.sender, consumption.settlement_ref) is not None:
                raise _duplicate_settlement_ref()
            quota = uow.quotas.get(locked.binding_id, lock=True)
            # No quota granted yet: nothing to draw, and a refusal writes nothing (not even an empty quota).
            balance, drawn = draw(QuotaBalance() if quota is None else quota.balance, consumption.amount_fen,
                                  consumption.allow_partial)
            assert quota is not None
            month = open_clearing_month(uow, now)
            record = Consumption(header.message_id, locked.binding_id, locked.giver_province, header.sender,
                                 consumption.settlement_ref, consumption.kind, consumption.amount_fen, drawn, 0,
                                 month, consumption.care_pooling_area, now)
            if not uow.quotas.add_consumption(record):  # the reference taken meanwhile (PostgreSQL)
                raise _duplicate_settlement_ref()
            made.append(record)
            record_change(uow, quota, QuotaEvent(locked.binding_id, quota.version + 1, QuotaChange.CONSUMED, drawn,
                                                 0, balance, header.message_id, header.message_id, month, now),
                          consumption_count=1)
            return ctx.receipts.issue(request_sender=header.sender, request_message_id=header.message_id,
                                      request_sha256=digest, request_payload_type=decode.type_name,
                                      subject_id=header.message_id, state=record.state, at=now, quota=balance,
                                      drawn_fen=drawn)

        with ctx.in_flight.hold(header.sender, header.message_id):
            receipt, replay = run_once(uow, header.sender, header.message_id, decode.type_name, digest, now, act)
        # A replay commits nothing: the consumption is read as it stands, in the same transaction.
        stored = uow.quotas.consumption(header.sender, header.message_id) if replay else made[0]
    assert stored is not None, "an accepted consumption is stored with its answer"
    return ConsumptionAnswer(receipt, replay, stored)


def consumption_not_found() -> NotFound:
    return NotFound("no consumption of this binding with this settlement_ref", reason=reasons.CONSUMPTION_NOT_FOUND,
                    field="settlement_ref")


def reverse_consumption(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                        decode: PayloadDecoder[ConsumptionReversal]) -> ReversalAnswer:
    now = ctx.clock.now()
    with ctx.uow() as uow:
        reversal = authenticate(uow, envelope, decode, peer, now, ctx)
        validate_reversal(reversal)
        validate_reason(reversal.reason)
        header = reversal.header
        require_addressed_to_gateway(header, "a reversal")
        binding = _party_binding(uow, reversal.binding_id, header.sender)
        if header.sender != binding.receiver_province:
            raise PermissionDenied("only the receiver's province reverses a consumption (Q7)",
                                   reason=reasons.NOT_RECEIVER_PROVINCE, field="header.sender")
        found = uow.quotas.consumption_by_ref(header.sender, reversal.settlement_ref)
        if found is None or found.binding_id != binding.binding_id:
            raise consumption_not_found()
        digest = payload_digest(envelope.payload)
        made: list[tuple[Consumption, str]] = []

        def act() -> bytes:
            require_active(uow.provinces.get(header.sender), header.sender, "header.sender")
            locked = _binding_locked(uow, binding.binding_id)
            quota = locked_quota(uow, locked, now)
            consumption = uow.quotas.consumption(header.sender, found.consumption_id)
            assert consumption is not None
            check_reversal(consumption, reversal.amount_fen)
            # Back to the quota while the binding lasts (suspended too); released to the giver once it ended.
            ended = locked.state in ENDED
            balance = reverse(quota.balance, reversal.amount_fen, binding_active=not ended)
            month = open_clearing_month(uow, now)
            released = reversal.amount_fen if ended else 0
            uow.quotas.add_reversal(Reversal(header.sender, header.message_id, consumption.consumption_id,
                                             locked.binding_id, reversal.amount_fen, released, reversal.reason,
                                             month, now), consumption)
            reversed_after = consumption.reversed_fen + reversal.amount_fen
            record_change(uow, quota, QuotaEvent(locked.binding_id, quota.version + 1, QuotaChange.REVERSED,
                                                 reversal.amount_fen, released, balance, header.message_id,
                                                 consumption.consumption_id, month, now, reversed_after))
            after = dataclasses.replace(consumption, reversed_fen=reversed_after)
            made.append((after, month))
            return ctx.receipts.issue(request_sender=header.sender, request_message_id=header.message_id,
                                      request_sha256=digest, request_payload_type=decode.type_name,
                                      subject_id=consumption.consumption_id, state=after.state, at=now, quota=balance)

        with ctx.in_flight.hold(header.sender, header.message_id):
            receipt, replay = run_once(uow, header.sender, header.message_id, decode.type_name, digest, now, act)
        if replay:  # nothing committed: read in the same transaction
            stored, month = uow.quotas.consumption(header.sender, found.consumption_id), ""
            stored_reversal = uow.quotas.reversal(header.sender, header.message_id)
            month = "" if stored_reversal is None else stored_reversal.clearing_window_id
            assert stored is not None
            return ReversalAnswer(receipt, replay, stored, month)
    after, month = made[0]
    return ReversalAnswer(receipt, replay, after, month)


def get_quota(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
              decode: PayloadDecoder[QuotaQuery]) -> QuotaView:
    now = ctx.clock.now()
    with ctx.uow(read_only=True) as uow:
        query = authenticate(uow, envelope, decode, peer, now, ctx)
        validate_message_id(query.header.message_id)
        require_addressed_to_gateway(query.header, "a quota query")
        validate_message_id(query.binding_id, field="binding_id")
        binding = _party_binding(uow, query.binding_id, query.header.sender)  # the two provinces only
        return read_quota(uow, binding.binding_id, query.page_size, query.page_token)


def read_quota(uow: UnitOfWork, binding_id: str, page_size: int, page_token: str) -> QuotaView:
    """A quota's figures and one page of its consumptions, newest first (GetQuota, InspectQuota)."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be within 0..{MAX_PAGE_SIZE}", reason=reasons.INVALID_PAGE_SIZE,
                              field="page_size")
    size = page_size or DEFAULT_PAGE_SIZE
    before = token_position(page_token) if page_token else None
    quota = uow.quotas.get(binding_id)
    rows = uow.quotas.consumptions(binding_id, before, size + 1)
    more = len(rows) > size
    rows = rows[:size]
    token = position_token(rows[-1].created_at, rows[-1].consumption_id) if more else ""
    if quota is None:
        return QuotaView(binding_id, QuotaBalance(), 0, rows, token)
    return QuotaView(binding_id, quota.balance, quota.version, rows, token)

