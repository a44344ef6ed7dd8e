"""Binding use cases: propose, accept or refuse, dissolve, read, and member changes (D3, D6-D9)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from gateway.domain import reasons
from gateway.domain.bindings import (
    Binding,
    BindingAcceptance,
    BindingDissolution,
    BindingProposal,
    BindingQuery,
    BindingState,
    ConsentDecision,
    MemberChange,
    MemberChangeKind,
    validate_attestation,
    validate_proposal,
    validate_reason,
)
from gateway.domain.clock import BEIJING
from gateway.domain.eligibility import (
    MemberStatus,
    as_told_to_giver_province,
    check_attestation,
    check_eligibility,
    parse_valid_id,
)
from gateway.domain.envelope import Envelope
from gateway.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from gateway.domain.identity import IdNumber, mask_id_number
from gateway.domain.outbox import (
    NotifyBindingOutcome,
    OutboxKind,
    RequestConsent,
    binding_outcome_message_id,
    consent_message_id,
)
from gateway.domain.provinces import Province, effective_policy
from gateway.domain.transfers import validate_message_id, validate_pooling_area
from gateway.usecases.auth import PayloadDecoder, authenticate, require_addressed_to_gateway
from gateway.usecases.context import UseCaseContext
from gateway.usecases.idempotency import payload_digest, replay_if_seen, run_once
from gateway.usecases.ports import RunInDb, UnitOfWork
from gateway.usecases.provinces import require_active
from gateway.usecases.quota_changes import release_unused_quota
from gateway.usecases.relations import ask_both


@dataclass(frozen=True, slots=True)
class BindingAnswer:
    """A state-changing call's answer: the signed receipt (serialised envelope) and what it says."""

    receipt: bytes  # it says the state the call left the binding in
    replay: bool


def tell_both(uow: UnitOfWork, binding: Binding, state: BindingState, reason: str, at: datetime) -> None:
    """Both provinces are told the binding's change (its new state and the reason for it)."""
    message_id = binding_outcome_message_id(binding.binding_id, state, at)
    for province in (binding.giver_province, binding.receiver_province):
        uow.outbox.enqueue(province, NotifyBindingOutcome(state, reason), message_id, binding.binding_id, at)


def binding_not_found() -> NotFound:
    """For an unknown binding and for other provinces' alike: a province learns nothing of bindings not its own."""
    return NotFound("no such binding", reason=reasons.BINDING_NOT_FOUND, field="binding_id")


def _party_binding(uow: UnitOfWork, binding_id: str, sender: str) -> Binding:
    validate_message_id(binding_id, field="binding_id")
    binding = uow.bindings.get(binding_id)
    if binding is None or not binding.has_party(sender):
        raise binding_not_found()
    return binding


# -- ProposeBinding -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Proposal:
    proposal: BindingProposal
    giver_province: Province | None
    receiver_province: Province | None


def _accept_proposal(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                     decode: PayloadDecoder[BindingProposal]) -> _Proposal | BindingAnswer:
    """The proposal to check with both provinces, or, for a resend, the stored answer (D15)."""
    now = ctx.clock.now()
    with ctx.uow() as uow:
        proposal = authenticate(uow, envelope, decode, peer, now, ctx)
        header = proposal.header
        # Before the time-dependent checks: a resend after its consent_by still gets its original answer.
        stored = replay_if_seen(uow, header.sender, header.message_id, payload_digest(envelope.payload))
        if stored is not None:
            return BindingAnswer(stored, True)
        validate_proposal(proposal, now)
        # An unknown or suspended province is a refusal stored like any other (_store_proposal decides it).
        return _Proposal(proposal, uow.provinces.get(header.sender), uow.provinces.get(header.receiver))


def _binding_id_taken() -> AlreadyExists:
    return AlreadyExists("this binding_id is taken; use a new id",
                         reason=reasons.BINDING_ID_TAKEN, field="header.message_id")


def _store_proposal(ctx: UseCaseContext, envelope: Envelope, proposal: BindingProposal, payload_type: str,
                    giver_status: MemberStatus, receiver_status: MemberStatus) -> BindingAnswer:
    now = ctx.clock.now()
    today = now.astimezone(BEIJING).date()
    header = proposal.header
    binding_id = header.message_id
    digest = payload_digest(envelope.payload)
    with ctx.uow() as uow:

        def propose() -> bytes:
            require_active(uow.provinces.get(header.sender), header.sender, "header.sender")
            require_active(uow.provinces.get(header.receiver), header.receiver, "header.receiver")
            # The giver's province hears what VerifyRelation would tell it, no more (D19).
            violations = as_told_to_giver_province(check_eligibility(
                giver_id_number=proposal.giver.id_number, receiver_id_number=proposal.receiver.id_number,
                relation_code=proposal.relation_code, giver_status=giver_status, receiver_status=receiver_status,
                on=today))
            if violations:
                raise FailedPrecondition("not eligible: " + ", ".join(v.reason for v in violations),
                                         reason=violations[0].reason, field=violations[0].field)
            giver_ref = ctx.hasher.ref(proposal.giver.id_number)
            receiver_ref = ctx.hasher.ref(proposal.receiver.id_number)
            # Two proposals for one person at once must not both find them free (single_relation_only).
            uow.bindings.lock_people(giver_ref, receiver_ref)
            for code, ref, role in ((header.sender, giver_ref, "giver"), (header.receiver, receiver_ref, "receiver")):
                province = uow.provinces.get(code)
                policy = effective_policy(province.policy) if province else None
                if policy and policy.single_relation_only and any(
                        b.holds_people(now) for b in uow.bindings.of_person(ref)):
                    raise FailedPrecondition(f"the {role}'s province allows one family relation at a time (D8)",
                                             reason=reasons.SINGLE_RELATION_ONLY, field=f"{role}.id_number")
            if uow.bindings.exists(binding_id):
                raise _binding_id_taken()
            assert proposal.consent_by is not None  # validate_proposal requires it
            added = uow.bindings.add(Binding(
                binding_id=binding_id, state=BindingState.PROPOSED, giver_province=header.sender,
                receiver_province=header.receiver, giver_id_masked=mask_id_number(proposal.giver.id_number),
                receiver_id_masked=mask_id_number(proposal.receiver.id_number), relation_code=proposal.relation_code,
                authorised_amount_fen=proposal.authorised_amount_fen,
                consent_by=proposal.consent_by, created_at=now, updated_at=now, proposal_sha256=digest,
                giver_ref=giver_ref, receiver_ref=receiver_ref), envelope)
            if not added:  # another province's proposal of the same id got there first
                raise _binding_id_taken()
            uow.outbox.enqueue(header.receiver, RequestConsent(), consent_message_id(binding_id), binding_id, now)
            return ctx.receipts.issue(request_sender=header.sender, request_message_id=binding_id,
                                      request_sha256=digest, request_payload_type=payload_type, subject_id=binding_id,
                                      state=BindingState.PROPOSED.value, at=now)

        with ctx.in_flight.hold(header.sender, binding_id):
            receipt, replay = run_once(uow, header.sender, binding_id, payload_type, digest, now, propose)
    return BindingAnswer(receipt, replay)


async def propose_binding(ctx: UseCaseContext, run_in_db: RunInDb, envelope: Envelope, peer: str | None,
                          decode: PayloadDecoder[BindingProposal]) -> BindingAnswer:
    """Check eligibility with both provinces, store PROPOSED and ask the receiver's province for consent."""
    accepted: _Proposal | BindingAnswer = await run_in_db(_accept_proposal, ctx, envelope, peer, decode)
    if isinstance(accepted, BindingAnswer):
        return accepted  # a resend: the provinces are not asked again
    proposal = accepted.proposal
    giver_province, receiver_province = accepted.giver_province, accepted.receiver_province
    if giver_province and giver_province.is_active and receiver_province and receiver_province.is_active:
        today = ctx.clock.now().astimezone(BEIJING).date()
        giver_status, receiver_status = await ask_both(ctx.members, (giver_province, proposal.giver),
                                                       (receiver_province, proposal.receiver), today)
    else:  # not asked: the refusal is decided and stored without them
        giver_status = receiver_status = MemberStatus.not_found()
    answer: BindingAnswer = await run_in_db(_store_proposal, ctx, envelope, proposal, decode.type_name,
                                           giver_status, receiver_status)
    return answer


# -- AcceptBinding, DissolveBinding, GetBinding ------------------------------------------------------

def _receiver_birth(uow: UnitOfWork, binding_id: str, decode_proposal: PayloadDecoder[BindingProposal]) -> date:
    """The receiver's birth date, read from the sealed proposal when it is needed (D6): no column holds it,
    since with the masked ID number (first 6 + last 4) it would be the 8 hidden digits (D19)."""
    envelope = uow.bindings.proposal_envelope(binding_id, decode_proposal.type_name)
    assert envelope is not None, "a stored binding keeps its proposal"
    receiver = IdNumber(decode_proposal(envelope.payload).receiver.id_number)  # valid: eligibility checked D1
    return receiver.birth_date


def _check_attested_at(attested_at: datetime, binding: Binding, now: datetime, skew: timedelta) -> None:
    """An attestation is made between the proposal and its answer (each allowing for the clocks' skew): not in
    the future, and never older than the proposal, so at most the consent window (72 hours) old."""
    if not binding.created_at - skew <= attested_at <= now + skew:
        raise InvalidArgument("attestation.attested_at must lie between the proposal and now",
                              reason=reasons.INVALID_ATTESTATION_TIME, field="attestation.attested_at")


def _either_suspended(uow: UnitOfWork, binding: Binding) -> bool:
    """D3: either person suspended by the province they are a member of here (D20)."""
    return uow.members.suspended_party(binding.giver_ref, binding.giver_province, binding.receiver_ref,
                                       binding.receiver_province) is not None


def accept_binding(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                   decode: PayloadDecoder[BindingAcceptance],
                   decode_proposal: PayloadDecoder[BindingProposal]) -> BindingAnswer:
    now = ctx.clock.now()
    with ctx.uow() as uow:
        acceptance = authenticate(uow, envelope, decode, peer, now, ctx)
        header = acceptance.header
        validate_message_id(header.message_id)
        require_addressed_to_gateway(header, "an acceptance")
        if acceptance.decision is ConsentDecision.ACCEPT and acceptance.attestation is None:
            raise InvalidArgument("an acceptance needs the receiver's attestation (D6)", reason=reasons.MISSING_FIELD,
                                  field="attestation")
        if acceptance.attestation is not None:
            validate_attestation(acceptance.attestation)
        binding = _party_binding(uow, acceptance.binding_id, header.sender)
        if header.sender != binding.receiver_province:
            raise PermissionDenied("only the receiver's province answers a proposal",
                                   reason=reasons.NOT_RECEIVER_PROVINCE,
                                   field="header.sender")
        if acceptance.attestation is not None:
            _check_attested_at(acceptance.attestation.attested_at, binding, now, ctx.max_clock_skew)
        digest = payload_digest(envelope.payload)
        new_state = BindingState.ACTIVE if acceptance.decision is ConsentDecision.ACCEPT else BindingState.REFUSED

        def answer() -> bytes:
            require_active(uow.provinces.get(header.sender), header.sender, "header.sender")  # a stored refusal
            if binding.state is not BindingState.PROPOSED:
                raise FailedPrecondition(f"the binding is {binding.state.value}, not PROPOSED",
                                         reason=reasons.BINDING_NOT_PROPOSED, field="binding_id")
            if now >= binding.consent_by:
                raise FailedPrecondition("the consent deadline has passed", reason=reasons.CONSENT_EXPIRED,
                                         field="binding_id")
            if acceptance.attestation is not None and new_state is BindingState.ACTIVE:
                # Age on the gateway's date, not the attestation's own: a backdated attestation gains nothing.
                today = now.astimezone(BEIJING).date()
                birth = _receiver_birth(uow, binding.binding_id, decode_proposal)
                violations = check_attestation(acceptance.attestation.method, birth, today)
                if violations:
                    raise FailedPrecondition("the receiver is 16 or over: their own face verification is required (D6)",
                                             reason=violations[0].reason, field=violations[0].field)
            # A member the gateway already holds suspended (D3, ReportMemberChange) can neither give nor receive:
            # the relation starts SUSPENDED, and becomes ACTIVE when the suspension is lifted.
            state, reason = new_state, ""
            if new_state is BindingState.ACTIVE and _either_suspended(uow, binding):
                state, reason = BindingState.SUSPENDED, reasons.SETTLEMENT_SUSPENDED
            # The state read above may be stale by now (a refusal, an expiry or a member change at the same
            # moment): the conditional change decides, and only the answer that made it is told and attested.
            if not uow.bindings.change_state(binding.binding_id, [BindingState.PROPOSED], state, reason, now):
                current = uow.bindings.get(binding.binding_id)
                raise FailedPrecondition(f"the binding is {current.state.value if current else 'gone'}, not PROPOSED",
                                         reason=reasons.BINDING_NOT_PROPOSED, field="binding_id")
            if acceptance.attestation is not None and new_state is BindingState.ACTIVE:
                uow.bindings.record_attestation(binding.binding_id, acceptance.attestation)
            tell_both(uow, binding, state, reason, now)
            return ctx.receipts.issue(request_sender=header.sender, request_message_id=header.message_id,
                                      request_sha256=digest, request_payload_type=decode.type_name,
                                      subject_id=binding.binding_id, state=state.value, at=now)

        with ctx.in_flight.hold(header.sender, header.message_id):
            receipt, replay = run_once(uow, header.sender, header.message_id, decode.type_name, digest, now, answer)
    return BindingAnswer(receipt, replay)


def dissolve_binding(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                     decode: PayloadDecoder[BindingDissolution]) -> BindingAnswer:
    now = ctx.clock.now()
    with ctx.uow() as uow:
        dissolution = authenticate(uow, envelope, decode, peer, now, ctx)
        header = dissolution.header
        validate_message_id(header.message_id)
        require_addressed_to_gateway(header, "a dissolution")
        validate_reason(dissolution.reason)
        binding = _party_binding(uow, dissolution.binding_id, header.sender)
        digest = payload_digest(envelope.payload)

        def dissolve() -> bytes:
            require_active(uow.provinces.get(header.sender), header.sender, "header.sender")  # a stored refusal
            reason = dissolution.reason or "DISSOLVED_BY_MEMBER"
            if not uow.bindings.change_state(binding.binding_id, [BindingState.ACTIVE, BindingState.SUSPENDED],
                                             BindingState.DISSOLVED, reason, now):
                raise FailedPrecondition(f"the binding is {binding.state.value} and cannot be dissolved",
                                         reason=reasons.BINDING_NOT_ACTIVE, field="binding_id")
            tell_both(uow, binding, BindingState.DISSOLVED, reason, now)
            release_unused_quota(uow, binding, header.message_id, now)  # Q8, in the transaction that ends it
            return ctx.receipts.issue(request_sender=header.sender, request_message_id=header.message_id,
                                      request_sha256=digest, request_payload_type=decode.type_name,
                                      subject_id=binding.binding_id, state=BindingState.DISSOLVED.value, at=now)

        with ctx.in_flight.hold(header.sender, header.message_id):
            receipt, replay = run_once(uow, header.sender, header.message_id, decode.type_name, digest, now, dissolve)
    return BindingAnswer(receipt, replay)


def get_binding(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                decode: PayloadDecoder[BindingQuery]) -> Binding:
    now = ctx.clock.now()
    with ctx.uow(read_only=True) as uow:
        query = authenticate(uow, envelope, decode, peer, now, ctx)
        validate_message_id(query.header.message_id)
        require_addressed_to_gateway(query.header, "a binding query")
        return _party_binding(uow, query.binding_id, query.header.sender)


# -- ReportMemberChange ---------------------------------------------------------------------------

_ENDING = {MemberChangeKind.INSURANCE_ENDED: "MEMBER_INSURANCE_ENDED",
           MemberChangeKind.POOLING_AREA_MOVED: "MEMBER_MOVED_POOLING_AREA"}


def report_member_change(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                         decode: PayloadDecoder[MemberChange]) -> tuple[bytes, bool]:
    """Dissolve (D9) or suspend/resume (D3) the person's bindings at once; both provinces are told."""
    now = ctx.clock.now()
    with ctx.uow() as uow:
        change = authenticate(uow, envelope, decode, peer, now, ctx)
        header = change.header
        validate_message_id(header.message_id)
        require_addressed_to_gateway(header, "a member change")
        if parse_valid_id(change.person.id_number, now.astimezone(BEIJING).date()) is None:
            raise InvalidArgument("person.id_number is not a valid resident ID number",
                                  reason=reasons.INVALID_ID_NUMBER,
                                  field="person.id_number")
        # A province reports only on people insured with it (D20).
        validate_pooling_area(change.person.pooling_area, header.sender, "person.pooling_area")
        digest = payload_digest(envelope.payload)
        ref = ctx.hasher.ref(change.person.id_number)

        def apply() -> bytes:
            require_active(uow.provinces.get(header.sender), header.sender, "header.sender")  # a stored refusal
            # A binding moves by both its people's suspensions: changes for either are decided one at a time
            # (two resumes at once would each still see the other's suspension and leave it SUSPENDED).
            uow.bindings.lock_people(ref, *(b.giver_ref if b.receiver_ref == ref else b.receiver_ref
                                            for b in uow.bindings.of_person(ref)))
            # Read again under the lock (a binding may have moved before it was taken). Only the person's
            # own province speaks for them (D20): bindings where they sit on its side.
            mine = [b for b in uow.bindings.of_person(ref)
                    if (b.giver_ref == ref and b.giver_province == header.sender)
                    or (b.receiver_ref == ref and b.receiver_province == header.sender)]
            affected: list[str] = []

            def move(binding: Binding, from_states: list[BindingState], to: BindingState, reason: str) -> None:
                if uow.bindings.change_state(binding.binding_id, from_states, to, reason, now):
                    tell_both(uow, binding, to, reason, now)
                    affected.append(binding.binding_id)
                    if to is BindingState.DISSOLVED:
                        release_unused_quota(uow, binding, header.message_id, now)  # Q8

            for binding in mine:
                if change.kind in _ENDING:
                    move(binding, [BindingState.ACTIVE, BindingState.SUSPENDED], BindingState.DISSOLVED,
                         _ENDING[change.kind])
                    move(binding, [BindingState.PROPOSED], BindingState.EXPIRED, _ENDING[change.kind])
                elif change.kind is MemberChangeKind.SETTLEMENT_SUSPENDED:
                    move(binding, [BindingState.ACTIVE], BindingState.SUSPENDED, reasons.SETTLEMENT_SUSPENDED)
                else:
                    other, other_province = ((binding.receiver_ref, binding.receiver_province)
                                             if binding.giver_ref == ref and binding.giver_province == header.sender
                                             else (binding.giver_ref, binding.giver_province))
                    if not uow.members.is_suspended(other, other_province):
                        move(binding, [BindingState.SUSPENDED], BindingState.ACTIVE, "")
            if change.kind is MemberChangeKind.SETTLEMENT_SUSPENDED:
                uow.members.suspend(ref, header.sender, now)
            elif change.kind is MemberChangeKind.SETTLEMENT_RESUMED:
                uow.members.resume(ref, header.sender)
            return ctx.receipts.issue(request_sender=header.sender, request_message_id=header.message_id,
                                      request_sha256=digest, request_payload_type=decode.type_name,
                                      subject_id=header.message_id, state=change.kind.value, at=now,
                                      affected_ids=affected)

        with ctx.in_flight.hold(header.sender, header.message_id):
            return run_once(uow, header.sender, header.message_id, decode.type_name, digest, now, apply)


def expire_proposals(uow: UnitOfWork, now: datetime, limit: int) -> int:
    """Proposals unanswered by their consent deadline become EXPIRED, both provinces told."""
    expired, reason = 0, "CONSENT_NOT_GIVEN"
    for binding_id in uow.bindings.expired_proposals(now, limit):
        binding = uow.bindings.get(binding_id)
        if binding is not None and uow.bindings.change_state(binding_id, [BindingState.PROPOSED],
                                                             BindingState.EXPIRED, reason, now):
            uow.outbox.expire_pending(OutboxKind.REQUEST_CONSENT, binding_id, now, reason)
            tell_both(uow, binding, BindingState.EXPIRED, reason, now)
            expired += 1
    return expired
