"""Relation use cases: VerifyRelation (D1-D6), asking both provinces about their member, each query recorded."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, datetime

from gateway.domain import reasons
from gateway.domain.clock import BEIJING
from gateway.domain.eligibility import (
    MemberStatus,
    Violation,
    as_told_to_giver_province,
    check_eligibility,
    parse_valid_id,
)
from gateway.domain.envelope import Envelope
from gateway.domain.errors import InvalidArgument, Unavailable
from gateway.domain.provinces import PROVINCE_CODE, Province
from gateway.domain.relations import RelationAnswer, RelationQuery, record_of
from gateway.domain.transfers import PersonRef, validate_message_id, validate_pooling_area
from gateway.usecases.auth import PayloadDecoder, authenticate
from gateway.usecases.context import UseCaseContext
from gateway.usecases.ports import MemberDirectory, RunInDb
from gateway.usecases.provinces import require_active


async def ask_both(members: MemberDirectory, giver: tuple[Province, PersonRef], receiver: tuple[Province, PersonRef],
                   today: date) -> tuple[MemberStatus, MemberStatus]:
    """Each person's province says what only it knows (CheckMember, in parallel); UNAVAILABLE if one cannot."""

    async def status(province: Province, person: PersonRef) -> MemberStatus:
        if parse_valid_id(person.id_number, today) is None:
            return MemberStatus.not_found()  # not asked: no province insures an invalid number
        answer = await members.check_member(province, person)
        if answer is None:
            raise Unavailable(f"province {province.code} did not answer in time; retry with the same message_id",
                              reason=reasons.PROVINCE_UNAVAILABLE)
        return answer

    giver_status, receiver_status = await asyncio.gather(status(*giver), status(*receiver))
    return giver_status, receiver_status


@dataclass(frozen=True, slots=True)
class RelationCheck:
    query: RelationQuery
    giver_province: Province
    receiver_province: Province
    asked_at: datetime


def accept_relation_query(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                          decode: PayloadDecoder[RelationQuery]) -> RelationCheck:
    """Authenticate the query and find both provinces; the rules themselves are judged afterwards."""
    now = ctx.clock.now()
    with ctx.uow() as uow:
        query = authenticate(uow, envelope, decode, peer, now, ctx)
        # Proven the asking province's own by now (signature, TLS caller): only its own queries spend its budget.
        ctx.admit_relation_query(query.header.sender)
        validate_message_id(query.header.message_id)
        if not PROVINCE_CODE.fullmatch(query.header.receiver):
            raise InvalidArgument("header.receiver must be the receiver's province code",
                                  reason=reasons.INVALID_PROVINCE_CODE, field="header.receiver")
        if query.header.receiver == query.header.sender:
            raise InvalidArgument("giver and receiver are insured in the same province; the gateway carries "
                                  "cross-province relations only", reason=reasons.NOT_CROSS_PROVINCE,
                                  field="header.receiver")
        validate_pooling_area(query.giver.pooling_area, query.header.sender, "giver.pooling_area")
        validate_pooling_area(query.receiver.pooling_area, query.header.receiver, "receiver.pooling_area")
        return RelationCheck(query, require_active(uow.provinces.get(query.header.sender), query.header.sender,
                                            "header.sender"),
                             require_active(uow.provinces.get(query.header.receiver), query.header.receiver,
                                     "header.receiver"), now)


def record_relation_query(ctx: UseCaseContext, check: RelationCheck, answer: RelationAnswer) -> None:
    with ctx.uow() as uow:
        uow.relation_queries.record(record_of(check.query, answer, check.asked_at))
        uow.commit()


async def verify_relation(ctx: UseCaseContext, run_in_db: RunInDb, envelope: Envelope, peer: str | None,
                          decode: PayloadDecoder[RelationQuery]) -> list[Violation]:
    """Every failed rule of D1-D6 for this pair (empty: eligible), as the asking province may hear them.

    Recorded (masked) before it is answered; changes nothing else.
    """
    check: RelationCheck = await run_in_db(accept_relation_query, ctx, envelope, peer, decode)
    query = check.query
    today = ctx.clock.now().astimezone(BEIJING).date()
    giver_status, receiver_status = await ask_both(ctx.members, (check.giver_province, query.giver),
                                                   (check.receiver_province, query.receiver), today)
    violations = as_told_to_giver_province(check_eligibility(
        giver_id_number=query.giver.id_number, receiver_id_number=query.receiver.id_number,
        relation_code=query.relation_code, giver_status=giver_status, receiver_status=receiver_status, on=today))
    answer = RelationAnswer.NOT_ELIGIBLE if violations else RelationAnswer.ELIGIBLE
    await run_in_db(record_relation_query, ctx, check, answer)
    return violations
