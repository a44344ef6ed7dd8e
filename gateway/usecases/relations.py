"""Relation use cases: VerifyRelation (D1-D6), asking both provinces about their member."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.domain.clock import BEIJING
from gateway.domain.eligibility import MemberStatus, Violation, check_eligibility, parse_valid_id
from gateway.domain.envelope import Envelope
from gateway.domain.errors import FailedPrecondition, InvalidArgument, Unavailable
from gateway.domain.provinces import PROVINCE_CODE, Province
from gateway.domain.relations import RelationQuery
from gateway.domain.transfers import PersonRef, validate_message_id
from gateway.usecases.auth import authenticate
from gateway.usecases.context import UseCaseContext

RELATION_QUERY_TYPE = "gongji.v1.RelationQuery"
RunInDb = Callable[..., Awaitable[Any]]


class MemberDirectory(Protocol):
    """Asks a province about one of its insured people (CheckMember); None when it cannot be reached."""

    async def check_member(self, province: Province, person: PersonRef) -> MemberStatus | None: ...


@dataclass(frozen=True, slots=True)
class RelationCheck:
    query: RelationQuery
    giver_province: Province
    receiver_province: Province


def _active(province: Province | None, code: str, field: str) -> Province:
    if province is None:
        raise FailedPrecondition(f"province {code} is not in the routing table", reason="UNKNOWN_PROVINCE",
                                 field=field)
    if not province.is_active:
        raise FailedPrecondition(f"province {code} is suspended", reason="PROVINCE_SUSPENDED", field=field)
    return province


def accept_relation_query(ctx: UseCaseContext, envelope: Envelope, peer: str | None,
                          decode: Callable[[bytes], RelationQuery]) -> RelationCheck:
    """Authenticate the query and find both provinces; the rules themselves are judged afterwards."""
    now = ctx.clock.now()
    with ctx.uow() as uow:
        query = authenticate(uow, envelope, RELATION_QUERY_TYPE, decode, peer, now, ctx.max_clock_skew, ctx.verify)
        validate_message_id(query.header.message_id)
        if not PROVINCE_CODE.fullmatch(query.header.receiver):
            raise InvalidArgument("header.receiver must be the receiver's province code",
                                  reason="INVALID_PROVINCE_CODE", field="header.receiver")
        return RelationCheck(query, _active(uow.provinces.get(query.header.sender), query.header.sender,
                                            "header.sender"),
                             _active(uow.provinces.get(query.header.receiver), query.header.receiver,
                                     "header.receiver"))


async def verify_relation(ctx: UseCaseContext, run_in_db: RunInDb, members: MemberDirectory, envelope: Envelope,
                          peer: str | None, decode: Callable[[bytes], RelationQuery]) -> list[Violation]:
    """Every failed rule of D1-D6 for this pair (empty: eligible). Changes nothing."""
    check: RelationCheck = await run_in_db(accept_relation_query, ctx, envelope, peer, decode)
    query = check.query
    today = ctx.clock.now().astimezone(BEIJING).date()

    async def status(province: Province, person: PersonRef) -> MemberStatus | None:
        if parse_valid_id(person.id_number, today) is None:
            return MemberStatus.not_found()  # not asked: no province insures an invalid number
        return await members.check_member(province, person)

    giver_status, receiver_status = await asyncio.gather(status(check.giver_province, query.giver),
                                                         status(check.receiver_province, query.receiver))
    for answer, province in ((giver_status, check.giver_province), (receiver_status, check.receiver_province)):
        if answer is None:
            raise Unavailable(f"province {province.code} did not answer in time; retry later",
                              reason="PROVINCE_UNAVAILABLE")
    assert giver_status is not None and receiver_status is not None
    return check_eligibility(giver_id_number=query.giver.id_number, receiver_id_number=query.receiver.id_number,
                             relation_code=query.relation_code, giver_status=giver_status,
                             receiver_status=receiver_status, on=today)
