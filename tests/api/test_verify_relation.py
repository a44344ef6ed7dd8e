"""VerifyRelation over real channels: the gateway asks both stub provinces and reports every failed rule."""

from __future__ import annotations

import logging

import grpc
import pytest

from protos.gongji.v1 import operations_pb2, relations_pb2
from tests.support import GANSU, MOTHER, Stack, error_of

ELIGIBLE, NOT_ELIGIBLE = relations_pb2.ELIGIBILITY_ELIGIBLE, relations_pb2.ELIGIBILITY_NOT_ELIGIBLE
GIRL_2010 = ("620102201003010023", "620100")  # Gansu, resident insurance, born 2010-03-01, female
SUSPENDED = ("620102199207070511", "620100")  # Gansu, employee insurance, settlement suspended
INACTIVE = ("620402197001010043", "620400")  # Gansu, insurance ended


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
    (SUSPENDED, "71", {("SETTLEMENT_SUSPENDED", "D3", "receiver")}),
    (INACTIVE, "50", {("RECEIVER_NOT_INSURED", "D2", "receiver")}),
    (("620102199001010011", "620100"), "70", {("RECEIVER_NOT_INSURED", "D2", "receiver")}),  # not in Gansu's seed
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
