"""VerifyRelation over real channels: both provinces asked, every failed rule the asker may hear, recorded, limited."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from gateway.domain.settlement import SettlementPolicy
from gateway.store.tables import relation_queries_t
from protos.gongji.v1 import common_pb2, operations_pb2, relations_pb2
from tests.support import (
    CLEAR_PERSONAL_DATA,
    GANSU,
    GIVER,
    MOTHER,
    XINJIANG,
    LoopThread,
    Stack,
    error_of,
    start_stack,
    ts,
    unique_id,
)

ELIGIBLE, NOT_ELIGIBLE = relations_pb2.ELIGIBILITY_ELIGIBLE, relations_pb2.ELIGIBILITY_NOT_ELIGIBLE
GIRL_2010 = ("620102201003010023", "620100")  # Gansu, resident insurance, born 2010-03-01, female
SUSPENDED = ("620102199207070511", "620100")  # Gansu, employee insurance, settlement suspended
INACTIVE = ("620402197001010043", "620400")  # Gansu, insurance ended
NOT_IN_GANSU = ("620102199001010011", "620100")  # a valid number no one in Gansu's seed has
CHEN = ("620103198203040034", "620100")  # Gansu, employee insurance, male, born 1982: insured and not suspended
# What only Gansu knows of its member reaches the asking province as this one reason (D19).
RECEIVER_NOT_ELIGIBLE = ("RECEIVER_NOT_ELIGIBLE", "D2-D3", "receiver")


def reasons(answer: relations_pb2.VerifyRelationResponse) -> set[tuple[str, str, str]]:
    return {(v.reason, v.rule, v.field) for v in answer.violations}


def test_the_giver_and_his_mother_are_eligible(stack: Stack) -> None:
    answer = stack.verify_relation(MOTHER, relation_code="52")  # 52: mother
    assert (answer.eligibility, list(answer.violations)) == (ELIGIBLE, [])


@pytest.mark.parametrize(("receiver", "code", "expected"), [
    (MOTHER, "28", {("INELIGIBLE_RELATION", "D4", "relation_code")}),  # an in-law
    (MOTHER, "66", {("INELIGIBLE_RELATION", "D4", "relation_code")}),  # great-grandparent
    (MOTHER, "2x", {("INVALID_RELATION_CODE", "D4", "relation_code")}),
    (MOTHER, "51", {("RELATION_INCONSISTENT", "D5", "relation_code")}),  # "father", but a woman
    (MOTHER, "21", {("RELATION_INCONSISTENT", "D5", "relation_code")}),  # "son": older than the giver and a woman
    (GIRL_2010, "58", {("RELATION_INCONSISTENT", "D5", "relation_code")}),  # "mother", but younger than the giver
    (SUSPENDED, "71", {RECEIVER_NOT_ELIGIBLE}),
    (INACTIVE, "50", {RECEIVER_NOT_ELIGIBLE}),
    (NOT_IN_GANSU, "70", {RECEIVER_NOT_ELIGIBLE}),
], ids=["in-law", "great-grandparent", "malformed code", "father a woman", "son older", "mother younger",
        "settlement suspended", "insurance ended", "not insured there"])
def test_each_failed_rule_is_reported_with_its_reason(stack: Stack, receiver: tuple[str, str], code: str,
                                                       expected: set[tuple[str, str, str]]) -> None:
    answer = stack.verify_relation(receiver, relation_code=code)
    assert answer.eligibility == NOT_ELIGIBLE
    assert reasons(answer) == expected


def test_every_failed_rule_is_reported_not_just_the_first(stack: Stack) -> None:
    answer = stack.verify_relation(("62010219650512002X", "620100"), relation_code="28")  # bad check character
    assert {("INVALID_ID_NUMBER", "D1", "receiver.id_number"), ("INELIGIBLE_RELATION", "D4", "relation_code")} <= \
        reasons(answer)


def test_an_unreachable_province_is_unavailable_and_no_personal_data_is_shown(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(code=GANSU, endpoint="127.0.0.1:9"),
                                    timeout=5)
    with caplog.at_level(logging.DEBUG):
        seen = error_of(lambda: stack.verify_relation(MOTHER))
    assert (seen.code, seen.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVINCE_UNAVAILABLE")
    shown = seen.message + caplog.text
    for clear in (MOTHER[0], "650502199001011230", "李秀英", "张伟"):
        assert clear not in shown


def test_a_suspended_receiver_province_is_refused(stack: Stack) -> None:
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=GANSU, status=operations_pb2.PROVINCE_STATUS_SUSPENDED), timeout=5)
    seen = error_of(lambda: stack.verify_relation(MOTHER))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PROVINCE_SUSPENDED")


# -- what the asking province may learn of another province's member -----------------------------------

def test_the_receivers_provinces_facts_reach_the_asking_province_as_one_reason(stack: Stack) -> None:
    """Insured or not, suspended or not: Xinjiang hears one RECEIVER_NOT_ELIGIBLE, in answers identical byte for
    byte, so it cannot sort Gansu's people by insurance or by the fraud flag of a suspension."""
    assert stack.verify_relation(CHEN, relation_code="70").eligibility == ELIGIBLE  # 70: sibling; the question is fine
    answers = {name: stack.verify_relation(person, relation_code="70")
               for name, person in (("suspended", SUSPENDED), ("insurance ended", INACTIVE),
                                    ("not insured there", NOT_IN_GANSU))}
    for name, answer in answers.items():
        assert (answer.eligibility, [(v.reason, v.rule, v.field) for v in answer.violations]) == (
            NOT_ELIGIBLE, [RECEIVER_NOT_ELIGIBLE]), name
    assert len({answer.SerializeToString(deterministic=True) for answer in answers.values()}) == 1


def test_rules_the_asking_province_can_check_itself_stay_specific(stack: Stack) -> None:
    # 51 (father) for a man born 1992, younger than the giver: D5 by name, before the receiver's province's say.
    answer = stack.verify_relation(SUSPENDED, relation_code="51")
    assert [(v.reason, v.rule, v.field) for v in answer.violations] == [
        ("RELATION_INCONSISTENT", "D5", "relation_code"), RECEIVER_NOT_ELIGIBLE]
    # Gansu asking about its own member as the giver hears its own facts by name.
    for giver, expected in ((SUSPENDED, ("SETTLEMENT_SUSPENDED", "D3", "giver")),
                            (MOTHER, ("GIVER_NOT_EMPLOYEE", "D2", "giver"))):
        answer = stack.verify_relation(GIVER, relation_code="70", giver=giver, sender=GANSU,
                                       receiver_province=XINJIANG)
        assert [(v.reason, v.rule, v.field) for v in answer.violations] == [expected]


# -- the record of queries -----------------------------------------------------------------------------

def relation_queries(stack: Stack) -> list[tuple[Any, ...]]:
    q = relation_queries_t.c
    with stack.gateway.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(select(
            q.asking_province, q.receiver_province, q.message_id, q.giver_id_masked, q.receiver_id_masked,
            q.relation_code, q.answer, q.asked_at).order_by(q.id))]


def test_each_query_leaves_one_record_with_masked_id_numbers_only(stack: Stack) -> None:
    before = stack.clock.now()
    name_in_id_field = ("李秀英" + "620102196505", "620100")  # 18 characters, a name among them
    asked = [(MOTHER, "52", "620102********0026", "52", "ELIGIBLE"),
             (SUSPENDED, "70", "620102********0511", "70", "NOT_ELIGIBLE"),
             (("62010219650512002x", "620100"), "28", "620102********002X", "28", "NOT_ELIGIBLE"),  # bad check
             (name_in_id_field, "2x", "", "", "NOT_ELIGIBLE")]  # neither kept: not an ID number, not a code
    message_ids = []
    for person, code, *_ in asked:
        stack.verify_relation(person, relation_code=code)
        message_ids.append(relation_queries(stack)[-1][2])
    # A query refused before it is answered tells nothing and is not recorded.
    seen = error_of(lambda: stack.verify_relation(("610103196207070037", "610100"), receiver_province="610000"))
    assert seen.reason == "UNKNOWN_PROVINCE"

    rows = relation_queries(stack)
    assert [row[:7] for row in rows] == [
        (XINJIANG, GANSU, message_id, "650502********1230", masked, kept_code, answer)
        for message_id, (_, _, masked, kept_code, answer) in zip(message_ids, asked, strict=True)]
    assert len(set(message_ids)) == len(asked) and all(m.startswith("vr-") for m in message_ids)
    assert all(before <= asked_at <= stack.clock.now() for *_, asked_at in rows)
    # Nothing that gives an ID number back: no clear number or name, no birth date, no hidden digits.
    stored = repr(rows)
    for clear in (*CLEAR_PERSONAL_DATA, "李秀英", "19650512", "1965-05-12", "19920707", "1992-07-07"):
        assert clear not in stored


# -- VerifyRelation's own budget -------------------------------------------------------------------------

QUERY_RATE = 0.001  # one query every 1000 s: only moving the stack's clock refills the bucket
QUERY_BURST = 3


@pytest.fixture
def query_limited(loop_thread: LoopThread, tmp_path: Path, db_url: str) -> Iterator[Stack]:
    running = start_stack(loop_thread, tmp_path, db_url, relation_query_rate_per_second=QUERY_RATE,
                          relation_query_burst=QUERY_BURST, settlement=SettlementPolicy(close_on_schedule=False))
    yield running
    running.close()


def test_relation_queries_are_limited_per_asking_province(query_limited: Stack) -> None:
    stack = query_limited
    # Forgeries in Xinjiang's name are refused as such and spend none of its queries.
    for _ in range(2 * QUERY_BURST):
        forged = error_of(lambda: stack.relations.VerifyRelation(relations_pb2.VerifyRelationRequest(
            query=forge(stack.sign(relation_query(stack), XINJIANG))), timeout=10))
        assert (forged.code, forged.reason) == (grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE")
    for _ in range(QUERY_BURST):
        stack.verify_relation(MOTHER)
    seen = error_of(lambda: stack.verify_relation(MOTHER))
    assert (seen.code, seen.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"), seen
    assert XINJIANG in seen.message and "relation queries" in seen.message
    assert len(relation_queries(stack)) == QUERY_BURST  # the refused one was not answered, nor recorded

    # A budget of its own: Xinjiang's other calls are served, and so are Gansu's queries.
    assert stack.binding(stack.binding_id).state == relations_pb2.BINDING_STATE_ACTIVE
    answer = stack.verify_relation(GIVER, relation_code="70", giver=CHEN, sender=GANSU, receiver_province=XINJIANG)
    assert answer.eligibility == ELIGIBLE

    stack.clock.advance(1 / QUERY_RATE)  # one more query's worth
    assert stack.verify_relation(MOTHER).eligibility == ELIGIBLE
    assert error_of(lambda: stack.verify_relation(MOTHER)).reason == "RATE_LIMITED"


def relation_query(stack: Stack) -> relations_pb2.RelationQuery:
    return relations_pb2.RelationQuery(
        header=common_pb2.Header(message_id=unique_id("vr"), sender=XINJIANG, receiver=GANSU,
                                 created_at=ts(stack.clock.now())),
        giver=common_pb2.PersonRef(id_number=GIVER[0], pooling_area=GIVER[1]),
        receiver=common_pb2.PersonRef(id_number=MOTHER[0], pooling_area=MOTHER[1]), relation_code="52")


def forge(envelope: common_pb2.SignedEnvelope) -> common_pb2.SignedEnvelope:
    envelope.signature = bytes(64)
    return envelope
