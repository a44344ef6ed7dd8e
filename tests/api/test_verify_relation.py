"""VerifyRelation over real channels: the gateway asks both stub provinces and reports every failed rule the asker
may hear."""

from __future__ import annotations

import logging

import grpc
import pytest

from protos.gongji.v1 import operations_pb2, relations_pb2
from tests.support import GANSU, GIVER, MOTHER, XINJIANG, Stack, error_of

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
