"""Operators' read-only bindings: ListBindings, InspectBinding and `gongji bindings list/show` (masked IDs only)."""

from __future__ import annotations

import json
from datetime import UTC, timedelta

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import common_pb2, operations_pb2, relations_pb2
from tests.api.cli_support import gongji, gongji_json, invoke, wide_terminal  # noqa: F401
from tests.support import CLEAR_PERSONAL_DATA, GANSU, GIVER, XINJIANG, Stack, error_of, wait_until

W = operations_pb2
R = relations_pb2
SHAANXI = "610000"
CHILD = ("620102201508160027", "620100")  # Gansu, the giver's daughter (code 30)
CHEN = ("620103198203040034", "620100")  # Gansu, employee
LIU = ("650502198803150422", "650500")  # Xinjiang, his wife (code 12)
ZHANG_FATHER = ("610103196207070037", "610100")  # Shaanxi, the giver's father (code 51)
CHEN_FATHER = ("610102195604100016", "610100")  # Shaanxi, Chen's father (code 51)


def ids(stack: Stack, page_size: int = 100, **filters: object) -> list[str]:
    answer = stack.operations.ListBindings(W.ListBindingsRequest(page_size=page_size, **filters),  # type: ignore[arg-type]
                                           timeout=5)
    return [b.binding_id for b in answer.bindings]


def no_clear_personal_data(*shown: Message | str) -> None:
    """As at rest (tests/api/test_personal_data_at_rest.py): no seeded person's ID number or name in clear."""
    text = "\n".join(s if isinstance(s, str) else text_format.MessageToString(s, as_utf8=True) for s in shown)
    leaked = [value[:6] + "…" for value in CLEAR_PERSONAL_DATA if value in text]
    assert not leaked, f"clear personal data shown to operators (D19): {leaked}"


def test_bindings_by_province_and_state_newest_first_and_one_in_full(stack: Stack) -> None:
    stack.add_province(SHAANXI, "陕西")
    first = stack.binding_id  # Xinjiang -> Gansu, ACTIVE
    stack.configure(GANSU, consent_mode=control_pb2.CONSENT_MODE_NEVER)
    proposed = common_pb2.Receipt.FromString(stack.propose(CHILD, relation_code="30").receipt.payload).subject_id
    to_xinjiang = stack.bind(CHEN, LIU, "12", GANSU, XINJIANG)
    to_shaanxi = stack.bind(GIVER, ZHANG_FATHER, "51", XINJIANG, SHAANXI)

    newest_first = [to_shaanxi, to_xinjiang, proposed, first]
    assert ids(stack) == newest_first
    assert ids(stack, province=GANSU) == [to_xinjiang, proposed, first]
    assert ids(stack, province=SHAANXI) == [to_shaanxi]
    assert ids(stack, states=[R.BINDING_STATE_PROPOSED]) == [proposed]
    assert ids(stack, states=[R.BINDING_STATE_ACTIVE], province=GANSU) == [to_xinjiang, first]
    assert ids(stack, states=[R.BINDING_STATE_ACTIVE, R.BINDING_STATE_PROPOSED], province=XINJIANG) == \
        [to_shaanxi, to_xinjiang, proposed, first]
    assert ids(stack, states=[R.BINDING_STATE_DISSOLVED]) == []

    # Pages stay exact while bindings are made: a new one comes before the first page, never in a later one.
    seen, token, made = [], "", []
    while True:
        page = stack.operations.ListBindings(W.ListBindingsRequest(
            states=[R.BINDING_STATE_ACTIVE], page_size=1, page_token=token), timeout=5)
        seen += [b.binding_id for b in page.bindings]
        token = page.next_page_token
        if not token:
            break
        if not made:
            made.append(stack.bind(CHEN, CHEN_FATHER, "51", GANSU, SHAANXI))
    assert seen == [to_shaanxi, to_xinjiang, first] and ids(stack)[0] == made[0]

    listed = stack.operations.ListBindings(W.ListBindingsRequest(), timeout=5)
    view = next(b for b in listed.bindings if b.binding_id == first)
    assert (view.giver_id_masked, view.receiver_id_masked) == ("650502********1230", "620102********0026")

    waiting = stack.operations.InspectBinding(W.InspectBindingRequest(binding_id=proposed), timeout=5)
    assert waiting.binding.state == R.BINDING_STATE_PROPOSED and not waiting.HasField("attested_at")
    # The proposal asked for consent within an hour of when it was signed, just before it arrived.
    consent_within = waiting.consent_by.ToDatetime(tzinfo=UTC) - waiting.binding.created_at.ToDatetime(tzinfo=UTC)
    assert timedelta(seconds=3590) < consent_within <= timedelta(seconds=3600)
    asked = wait_until(lambda: (a := stack.operations.InspectBinding(W.InspectBindingRequest(binding_id=proposed),
                                                                      timeout=5)).messages[0].status
                       == W.OUTBOX_MESSAGE_STATUS_DONE and a, what="the consent request delivered")
    assert [(m.destination, m.kind, m.attempts) for m in asked.messages] == [
        (GANSU, W.OUTBOX_MESSAGE_KIND_REQUEST_CONSENT, 1)]
    active = wait_until(lambda: len((a := stack.operations.InspectBinding(
        W.InspectBindingRequest(binding_id=first), timeout=5)).messages) == 3 and a, what="both told")
    assert active.binding.attestation_method == R.ATTESTATION_METHOD_FACE and active.HasField("attested_at")
    assert {(m.destination, m.kind, m.outcome) for m in active.messages[1:]} == {
        (code, W.OUTBOX_MESSAGE_KIND_NOTIFY_BINDING_OUTCOME, "ACTIVE") for code in (XINJIANG, GANSU)}
    no_clear_personal_data(listed, waiting, active)

    for request, code, reason in (
            (W.ListBindingsRequest(page_size=1001), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_SIZE"),
            (W.ListBindingsRequest(states=[99]), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_STATE"),
            (W.ListBindingsRequest(province="6500"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PROVINCE_CODE"),
            (W.ListBindingsRequest(page_token="x"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")):
        seen_error = error_of(lambda r=request: stack.operations.ListBindings(r, timeout=5))  # type: ignore[misc]
        assert (seen_error.code, seen_error.reason) == (code, reason), reason
    seen_error = error_of(lambda: stack.operations.InspectBinding(W.InspectBindingRequest(binding_id="b-none"),
                                                                  timeout=5))
    assert (seen_error.code, seen_error.reason) == (grpc.StatusCode.NOT_FOUND, "BINDING_NOT_FOUND")


def test_gongji_bindings_list_and_show(stack: Stack) -> None:
    stack.add_province(SHAANXI, "陕西")
    other = stack.bind(GIVER, ZHANG_FATHER, "51", XINJIANG, SHAANXI)
    listed = gongji_json(stack, "bindings", "list")
    assert [b["binding_id"] for b in listed] == [other, stack.binding_id]
    assert [b["binding_id"] for b in gongji_json(stack, "bindings", "list", "--province", GANSU,
                                                 "--state", "active")] == [stack.binding_id]
    code, out = gongji(stack, "bindings", "list")
    assert code == 0 and "newest first" in out and "650502********1230" in out and "more available" not in out
    result = invoke(stack, "bindings", "list", "--limit", "1", "--json")
    assert [b["binding_id"] for b in json.loads(result.stdout)] == [other]
    assert "more available: these are the newest 1" in result.output

    code, shown = gongji(stack, "bindings", "show", stack.binding_id)
    assert code == 0 and "ACTIVE" in shown and "620102********0026" in shown and "by FACE" in shown
    assert "REQUEST_CONSENT" in shown and "NOTIFY_BINDING_OUTCOME ACTIVE" in shown
    full = gongji_json(stack, "bindings", "show", stack.binding_id)
    assert full["binding"]["binding_id"] == stack.binding_id and "consent_by" in full
    no_clear_personal_data(out, shown, result.output, json.dumps(full, ensure_ascii=False))

    code, out = gongji(stack, "bindings", "list", "--state", "married")
    assert code == 2 and "unknown binding state" in out
    code, out = gongji(stack, "bindings", "show", "b-no-such-binding")
    assert code == 1 and "NOT_FOUND BINDING_NOT_FOUND" in out and "Traceback" not in out
