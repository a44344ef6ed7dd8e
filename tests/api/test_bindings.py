"""Bindings over real channels: propose, consent (D6), refuse, expire, dissolve, member changes (D3, D9)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.security.keys import public_bytes
from gateway.security.signing import EnvelopeSigner
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import operations_pb2, relations_pb2
from tests.support import GANSU, GIVER, MOTHER, XINJIANG, Stack, error_of, error_seen, register, wait_until

R = relations_pb2
CHILD = ("620102201508160027", "620100")  # born 2015-08-16, female: the giver's daughter (code 30), under 16
OTHER_GIVER = ("652201198506152316", "650500")  # Hami, born 1985, male
SUSPENDED = ("620102199207070511", "620100")  # Gansu, employee, male, born 1992, settlement suspended
INACTIVE = ("620402197001010043", "620400")  # Gansu, insurance ended
NOT_IN_GANSU = ("620102199001010011", "620100")  # a valid number no one in Gansu's seed has


@pytest.fixture(autouse=True)
def manual_consent(stack: Stack) -> None:
    """Gansu's platform answers consent requests only when a test says so."""
    stack.configure(GANSU, consent_mode=control_pb2.CONSENT_MODE_NEVER)


def told(stack: Stack, province: str, binding_id: str) -> list[tuple[int, int]]:
    return [(n.binding_state, n.times_received) for n in stack.snapshot(province).notifications
            if n.binding_id == binding_id]


def test_propose_accept_with_face_makes_an_active_binding_and_both_provinces_hear(stack: Stack) -> None:
    proposed = stack.propose(MOTHER, relation_code="52", authorised_amount_fen=100_000)
    binding_id = stack_binding_id(proposed)
    assert (proposed.state, proposed.replay) == (R.BINDING_STATE_PROPOSED, False)
    wait_until(lambda: binding_id in stack.snapshot(GANSU).consent_requests, what="consent asked of Gansu")

    accepted = stack.answer_consent(binding_id, method=R.ATTESTATION_METHOD_FACE)
    assert accepted.state == R.BINDING_STATE_ACTIVE
    view = stack.binding(binding_id, signer=GANSU)
    assert (view.state, view.attestation_method, view.relation_code, view.authorised_amount_fen) == (
        R.BINDING_STATE_ACTIVE, R.ATTESTATION_METHOD_FACE, "52", 100_000)
    assert view.receiver_id_masked == "620102********0026"
    for province in (XINJIANG, GANSU):
        assert wait_until(lambda p=province: told(stack, p, binding_id), what=f"{province} told") == [
            (R.BINDING_STATE_ACTIVE, 1)]


def stack_binding_id(answer: R.ProposeBindingResponse) -> str:
    from protos.gongji.v1 import common_pb2

    return common_pb2.Receipt.FromString(answer.receipt.payload).subject_id


def test_a_proposal_resent_after_its_consent_deadline_gets_its_original_answer(stack: Stack) -> None:
    """D15: a resend of the same bytes days later (past the freshness window, past its consent_by) is
    answered from the record; the provinces are not asked again."""
    envelope = stack.signed_proposal(MOTHER, consent_seconds=600)
    first = stack.propose(envelope=envelope)
    binding_id = stack_binding_id(first)
    wait_until(lambda: binding_id in stack.snapshot(GANSU).consent_requests, what="consent asked of Gansu")
    stack.clock.advance(2 * 86_400)
    requests, consent_requests = stack.counts()["requests"], stack.snapshot(GANSU).consent_requests_received
    again = stack.propose(envelope=envelope)
    assert (again.replay, again.receipt) == (True, first.receipt)
    stack.wait_for_outbox_idle(GANSU)  # a second consent request, had one been queued, has gone out by now
    assert stack.counts()["requests"] == requests
    assert stack.snapshot(GANSU).consent_requests_received == consent_requests


def test_an_in_law_is_refused_with_its_reason_and_the_refusal_is_replayed(stack: Stack) -> None:
    binding_id = "b-inlaw-" + stack_binding_id(stack.propose(MOTHER, relation_code="52"))[-8:]
    seen = error_of(lambda: stack.propose(MOTHER, relation_code="28", binding_id=binding_id))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INELIGIBLE_RELATION")
    # The refusal is stored under its id: a retry with other bytes cannot turn it into a binding.
    again = error_of(lambda: stack.propose(MOTHER, relation_code="52", binding_id=binding_id))
    assert (again.code, again.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MODIFIED_REQUEST")
    seen = error_of(lambda: stack.binding(binding_id))
    assert seen.reason == "BINDING_NOT_FOUND"


def test_a_receiver_ineligible_by_her_provinces_facts_is_refused_with_one_reason(stack: Stack) -> None:
    """What only Gansu knows (insurance ended, not insured there, settlement suspended) is one reason to Xinjiang,
    with the same status, field and message; a rule Xinjiang can check itself still comes first, by name."""
    seen = {name: error_of(lambda p=person: stack.propose(p, relation_code="70"))  # type: ignore[misc]
            for name, person in (("suspended", SUSPENDED), ("insurance ended", INACTIVE),
                                 ("not insured there", NOT_IN_GANSU))}
    for name, refusal in seen.items():
        assert (refusal.code, refusal.reason, refusal.metadata.get("field")) == (
            grpc.StatusCode.FAILED_PRECONDITION, "RECEIVER_NOT_ELIGIBLE", "receiver"), name
    assert len({(r.message, tuple(sorted(r.metadata.items()))) for r in seen.values()}) == 1
    refusal = error_of(lambda: stack.propose(SUSPENDED, relation_code="51"))  # "father", younger than the giver
    assert (refusal.reason, refusal.message) == ("RELATION_INCONSISTENT",
                                                 "not eligible: RELATION_INCONSISTENT, RECEIVER_NOT_ELIGIBLE")


def test_a_child_under_16_is_bound_with_a_guardians_attestation(stack: Stack) -> None:
    binding_id = stack_binding_id(stack.propose(CHILD, relation_code="30"))
    assert stack.answer_consent(binding_id, method=R.ATTESTATION_METHOD_GUARDIAN_DOCUMENT).state == \
        R.BINDING_STATE_ACTIVE


def test_a_receiver_of_16_or_over_needs_her_own_face(stack: Stack) -> None:
    binding_id = stack_binding_id(stack.propose(MOTHER, relation_code="52"))
    seen = error_of(lambda: stack.answer_consent(binding_id, method=R.ATTESTATION_METHOD_GUARDIAN_DOCUMENT))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "FACE_REQUIRED")
    assert stack.binding(binding_id).state == R.BINDING_STATE_PROPOSED


def test_refusal_and_expiry(stack: Stack) -> None:
    refused = stack_binding_id(stack.propose(MOTHER, relation_code="52"))
    assert stack.answer_consent(refused, accept=False).state == R.BINDING_STATE_REFUSED
    unanswered = stack_binding_id(stack.propose(CHILD, relation_code="30", consent_seconds=600))
    stack.clock.advance(601)
    wait_until(lambda: stack.binding(unanswered).state == R.BINDING_STATE_EXPIRED, what="proposal expired")
    for province in (XINJIANG, GANSU):
        wait_until(lambda p=province: told(stack, p, unanswered) == [(R.BINDING_STATE_EXPIRED, 1)],
                   what=f"{province} told of the expiry")
    seen = error_of(lambda: stack.answer_consent(unanswered))
    assert seen.reason == "BINDING_NOT_PROPOSED"


def test_only_the_receivers_province_answers_and_only_the_parties_read(stack: Stack) -> None:
    binding_id = stack_binding_id(stack.propose(MOTHER, relation_code="52"))
    seen = error_of(lambda: stack.answer_consent(binding_id, signer=XINJIANG))
    assert (seen.code, seen.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_RECEIVER_PROVINCE")
    beijing_key = Ed25519PrivateKey.generate()
    register(stack.operations, "110000", "北京", "127.0.0.1:1", "110000-k1", public_bytes(beijing_key))
    stack.signers["110000"] = EnvelopeSigner("110000", "110000-k1", beijing_key)
    seen = error_of(lambda: stack.binding(binding_id, signer="110000"))
    assert (seen.code, seen.reason) == (grpc.StatusCode.NOT_FOUND, "BINDING_NOT_FOUND")  # as if there were none


def test_dissolving_ends_the_binding_once_and_both_hear(stack: Stack) -> None:
    binding_id = stack_binding_id(stack.propose(MOTHER, relation_code="52"))
    stack.answer_consent(binding_id)
    assert stack.dissolve(binding_id, signer=GANSU).state == R.BINDING_STATE_DISSOLVED
    seen = error_of(lambda: stack.dissolve(binding_id))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BINDING_NOT_ACTIVE")
    for province in (XINJIANG, GANSU):
        wait_until(lambda p=province: (R.BINDING_STATE_DISSOLVED, 1) in told(stack, p, binding_id),
                   what=f"{province} told of the dissolution")


def test_single_relation_only_refuses_a_second_binding_of_a_gansu_person(stack: Stack) -> None:
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=GANSU, policy=operations_pb2.ProvincePolicy(single_relation_only=True)), timeout=5)
    assert stack.binding(stack.binding_id).state == R.BINDING_STATE_ACTIVE  # the mother's first relation
    seen = error_of(lambda: stack.propose(MOTHER, relation_code="52", giver=OTHER_GIVER))
    assert (seen.code, seen.reason, seen.metadata.get("field")) == (
        grpc.StatusCode.FAILED_PRECONDITION, "SINGLE_RELATION_ONLY", "receiver.id_number")
    # Xinjiang has no such policy: its giver may have several relations.
    assert stack.propose(CHILD, relation_code="30").state == R.BINDING_STATE_PROPOSED


def test_member_changes_end_or_suspend_bindings_and_both_provinces_hear_once(stack: Stack) -> None:
    ended = stack_binding_id(stack.propose(MOTHER, relation_code="52"))
    stack.answer_consent(ended)
    suspended = stack_binding_id(stack.propose(CHILD, relation_code="30"))
    stack.answer_consent(suspended, method=R.ATTESTATION_METHOD_GUARDIAN_DOCUMENT)

    answer = stack.member_change(CHILD, R.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED)
    assert list(answer.affected_binding_ids) == [suspended]
    assert stack.binding(suspended).state == R.BINDING_STATE_SUSPENDED
    answer = stack.member_change(CHILD, R.MEMBER_CHANGE_KIND_SETTLEMENT_RESUMED)
    assert list(answer.affected_binding_ids) == [suspended]
    assert stack.binding(suspended).state == R.BINDING_STATE_ACTIVE

    answer = stack.member_change(MOTHER, R.MEMBER_CHANGE_KIND_INSURANCE_ENDED)
    assert set(answer.affected_binding_ids) == {ended, stack.binding_id}  # every binding of hers
    view = stack.binding(ended)
    assert (view.state, view.reason) == (R.BINDING_STATE_DISSOLVED, "MEMBER_INSURANCE_ENDED")
    for province in (XINJIANG, GANSU):
        wait_until(lambda p=province: (R.BINDING_STATE_DISSOLVED, 1) in told(stack, p, ended),
                   what=f"{province} told")
    stack.clock.advance(5)
    stack.wait_for_sweeps()
    for province in (XINJIANG, GANSU):
        stack.wait_for_outbox_idle(province)
        assert [t for t in told(stack, province, ended) if t[0] == R.BINDING_STATE_DISSOLVED] == [
            (R.BINDING_STATE_DISSOLVED, 1)], province
    # Gansu cannot speak for a Xinjiang member (D20).
    seen = error_of(lambda: stack.member_change(GIVER, R.MEMBER_CHANGE_KIND_INSURANCE_ENDED, signer=GANSU))
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_POOLING_AREA")
    assert stack.binding(suspended).state == R.BINDING_STATE_ACTIVE


def test_bad_proposals_are_refused_before_anything_is_stored(stack: Stack) -> None:
    before = stack.counts()
    for kwargs, reason in (({"receiver_province": XINJIANG, "receiver": ("650502198803150422", "650500")},
                            "NOT_CROSS_PROVINCE"),
                           ({"consent_seconds": 31 * 24 * 3600}, "INVALID_CONSENT_DEADLINE"),
                           ({"authorised_amount_fen": -1}, "INVALID_AMOUNT"),
                           ({"receiver": (MOTHER[0], "650500")}, "INVALID_POOLING_AREA")):
        seen = error_of(lambda k=kwargs: stack.propose(**k))
        assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), kwargs
    assert stack.counts() == before


# The child's ID number written into references, as a province's platform might (D19): whole, split by
# separators, inside other text, as a first-generation 15-digit number; and names.
CHILD_FIRST_GENERATION = CHILD[0][:6] + CHILD[0][8:14] + "002"  # 620102 150816 002
REFERENCES_WITH_PERSONAL_DATA = [
    (CHILD[0], "REFERENCE_LOOKS_LIKE_ID_NUMBER"),
    (f"HUKOU-{CHILD[0]}-1", "REFERENCE_LOOKS_LIKE_ID_NUMBER"),
    (f"HUKOU-{CHILD[0][:6]}-{CHILD[0][6:14]}.{CHILD[0][14:]}", "REFERENCE_LOOKS_LIKE_ID_NUMBER"),
    (f"OLD-{CHILD_FIRST_GENERATION}", "REFERENCE_LOOKS_LIKE_ID_NUMBER"),
    ("王小红", "INVALID_REFERENCE"),
    (f"王小红{CHILD[0]}", "INVALID_REFERENCE"),
    ("Wang Xiaohong", "INVALID_REFERENCE"),
]


def test_an_attestation_reference_holding_personal_data_is_refused_and_nothing_is_stored(stack: Stack) -> None:
    binding_id = stack_binding_id(stack.propose(CHILD, relation_code="30"))
    for evidence_ref, reason in REFERENCES_WITH_PERSONAL_DATA:
        before = stack.counts()
        seen = error_of(lambda ref=evidence_ref: stack.answer_consent(  # type: ignore[misc]
            binding_id, method=R.ATTESTATION_METHOD_GUARDIAN_DOCUMENT, evidence_ref=ref))
        assert (seen.code, seen.reason, seen.metadata.get("field")) == (
            grpc.StatusCode.INVALID_ARGUMENT, reason, "attestation.evidence_ref"), evidence_ref
        assert stack.counts() == before  # no binding change, no stored answer, no audit entry
        assert stack.binding(binding_id).state == R.BINDING_STATE_PROPOSED
    # An opaque reference is taken.
    assert stack.answer_consent(binding_id, method=R.ATTESTATION_METHOD_GUARDIAN_DOCUMENT,
                                evidence_ref="HUKOU-2026:0001/A.7").state == R.BINDING_STATE_ACTIVE


def test_a_letter_version_holding_personal_data_is_refused_and_nothing_is_stored(stack: Stack) -> None:
    before = stack.counts()
    for letter_version, reason in [*REFERENCES_WITH_PERSONAL_DATA, ("2024 01", "INVALID_REFERENCE"),
                                   ("v" * 33, "INVALID_REFERENCE")]:
        seen = error_of(lambda v=letter_version: stack.propose(CHILD, relation_code="30",  # type: ignore[misc]
                                                               letter_version=v))
        assert (seen.code, seen.reason, seen.metadata.get("field")) == (
            grpc.StatusCode.INVALID_ARGUMENT, reason, "commitment.letter_version"), letter_version
    assert stack.counts() == before


def test_concurrent_proposals_for_one_person_leave_one_relation_under_single_relation_only(stack: Stack) -> None:
    """Eight proposals for the daughter at once: exactly one is stored (D8), on PostgreSQL's concurrent writers too."""
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=GANSU, policy=operations_pb2.ProvincePolicy(single_relation_only=True)), timeout=5)
    barrier = threading.Barrier(8)
    answers: list[str] = []

    def one(giver: tuple[str, str]) -> None:
        barrier.wait()
        try:
            stack.propose(CHILD, relation_code="30", giver=giver)
            answers.append("OK")
        except grpc.RpcError as error:
            seen = error_seen(error)
            answers.append(f"{seen.code.name} {seen.reason}")

    threads = [threading.Thread(target=one, args=(GIVER if n % 2 else OTHER_GIVER,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(answers) == ["FAILED_PRECONDITION SINGLE_RELATION_ONLY"] * 7 + ["OK"]


# -- races (PostgreSQL reads committed data: these decide by conditional writes and locks) ----------------

def _at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released together; each outcome is its answer or its (code, reason)."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait(10)
        try:
            outcomes[index] = calls[index]()
        except grpc.RpcError as error:
            seen = error_seen(error)
            outcomes[index] = (seen.code, seen.reason)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_acceptances_and_refusals_at_once_decide_the_binding_once(stack: Stack) -> None:
    """Only the answer that moved the binding is acknowledged and told; the others are refused, whatever
    they read before it moved."""
    for _ in range(3):
        binding_id = stack_binding_id(stack.propose(CHILD, relation_code="30"))
        accept = functools.partial(stack.answer_consent, binding_id, method=R.ATTESTATION_METHOD_GUARDIAN_DOCUMENT)
        refuse = functools.partial(stack.answer_consent, binding_id, accept=False)
        outcomes = _at_once([accept] * 4 + [refuse] * 4)
        answers = [o for o in outcomes if isinstance(o, R.AcceptBindingResponse)]
        assert len(answers) == 1, outcomes
        assert set(o for o in outcomes if not isinstance(o, R.AcceptBindingResponse)) == {
            (grpc.StatusCode.FAILED_PRECONDITION, "BINDING_NOT_PROPOSED")}
        decided = answers[0].state
        assert stack.binding(binding_id).state == decided
        for province in (XINJIANG, GANSU):
            stack.wait_for_outbox_idle(province)
            assert told(stack, province, binding_id) == [(decided, 1)], province
        if decided == R.BINDING_STATE_ACTIVE:
            stack.dissolve(binding_id)


def test_two_members_resumed_at_once_leave_their_binding_active(stack: Stack) -> None:
    """Each resumption sees the other member's suspension unless they are decided one at a time: then the
    binding would stay SUSPENDED with nobody suspended."""
    binding_id = stack_binding_id(stack.propose(CHILD, relation_code="30"))
    stack.answer_consent(binding_id, method=R.ATTESTATION_METHOD_GUARDIAN_DOCUMENT)
    try:
        for _ in range(4):
            stack.member_change(GIVER, R.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED, signer=XINJIANG)
            stack.member_change(CHILD, R.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED, signer=GANSU)
            assert stack.binding(binding_id).state == R.BINDING_STATE_SUSPENDED
            outcomes = _at_once([
                lambda: stack.member_change(GIVER, R.MEMBER_CHANGE_KIND_SETTLEMENT_RESUMED, signer=XINJIANG),
                lambda: stack.member_change(CHILD, R.MEMBER_CHANGE_KIND_SETTLEMENT_RESUMED, signer=GANSU)])
            assert all(isinstance(o, R.ReportMemberChangeResponse) for o in outcomes), outcomes
            assert stack.binding(binding_id).state == R.BINDING_STATE_ACTIVE
    finally:
        stack.dissolve(binding_id)


def test_a_proposal_holds_its_people_for_its_consent_window_only_at_most_72_hours(stack: Stack) -> None:
    """Under single_relation_only a proposal left unanswered would lock a Gansu member out of any other relation:
    it may wait 72 hours at most, and holds no one once its consent deadline has passed."""
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=GANSU, policy=operations_pb2.ProvincePolicy(single_relation_only=True)), timeout=5)
    for days in (30, 4):
        seen = error_of(lambda days=days: stack.propose(CHILD, relation_code="30", consent_seconds=days * 86400))
        assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CONSENT_DEADLINE")
    stack.propose(CHILD, relation_code="30", consent_seconds=72 * 3600)
    seen = error_of(lambda: stack.propose(CHILD, relation_code="30", giver=OTHER_GIVER))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SINGLE_RELATION_ONLY")
    stack.clock.advance(72 * 3600 + 1)  # past its deadline: free again, whether or not the sweep expired it yet
    assert stack.propose(CHILD, relation_code="30", giver=OTHER_GIVER).state == R.BINDING_STATE_PROPOSED


def test_a_binding_of_a_member_the_gateway_holds_suspended_starts_suspended(stack: Stack) -> None:
    """D3: the giver's province reported his settlement suspended; his new relation cannot start ACTIVE."""
    stack.member_change(GIVER, R.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED, signer=XINJIANG)
    binding_id = stack_binding_id(stack.propose(CHILD, relation_code="30"))
    accepted = stack.answer_consent(binding_id, method=R.ATTESTATION_METHOD_GUARDIAN_DOCUMENT)
    assert accepted.state == R.BINDING_STATE_SUSPENDED
    view = stack.binding(binding_id)
    assert (view.state, view.reason) == (R.BINDING_STATE_SUSPENDED, "SETTLEMENT_SUSPENDED")
    for province in (XINJIANG, GANSU):
        assert wait_until(lambda p=province: told(stack, p, binding_id), what=f"{province} told") == [
            (R.BINDING_STATE_SUSPENDED, 1)]
    stack.member_change(GIVER, R.MEMBER_CHANGE_KIND_SETTLEMENT_RESUMED, signer=XINJIANG)
    assert stack.binding(binding_id).state == R.BINDING_STATE_ACTIVE


@pytest.mark.parametrize("offset", [
    pytest.param(timedelta(minutes=10), id="in the future"),
    pytest.param(-timedelta(hours=1), id="before the proposal"),
])
def test_an_attestation_dated_outside_the_consent_window_is_refused(stack: Stack, offset: timedelta) -> None:
    binding_id = stack_binding_id(stack.propose(MOTHER, relation_code="52", giver=OTHER_GIVER))
    before = stack.counts()
    seen = error_of(lambda: stack.answer_consent(binding_id, attested_at=stack.clock.now() + offset))
    assert (seen.code, seen.reason, seen.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ATTESTATION_TIME", "attestation.attested_at")
    assert stack.counts() == before and stack.binding(binding_id).state == R.BINDING_STATE_PROPOSED
    assert stack.answer_consent(binding_id).state == R.BINDING_STATE_ACTIVE  # dated now: taken
