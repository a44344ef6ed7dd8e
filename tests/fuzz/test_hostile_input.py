"""Hostile input (issue 5): every RPC that takes input is fed malformed requests by a property-based fuzzer.

One real stack per database for the whole module. Each example is one hostile call; it must end with a
status the contract names (never UNKNOWN or INTERNAL) carrying a google.rpc.ErrorInfo of domain
gongji.v1 with a stable reason, change nothing in the database, and leave the server serving.

The signed RPCs are fuzzed around a *base* message per RPC that is correctly signed and well formed
but refused by the gateway for a business reason (an unknown province, an absent transfer, an amount
over the policy limit, ...). A mutation that happens to change nothing (a truncation that lands on a
field boundary, a string replaced by itself) must therefore still be refused, and no mutation can
turn a base into a call that changes state. Only refusals caused by state are stored (D15): they may
add their one `requests` row, and nothing else.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text

from gateway.domain.settlement import SettlementPolicy
from gateway.security.keys import load_private_key
from gateway.security.signing import EnvelopeSigner
from gateway.wire import envelope_to_proto
from protos.gongji.v1 import (
    common_pb2,
    operations_pb2,
    quotas_pb2,
    relations_pb2,
    settlements_pb2,
    transfers_pb2,
)
from tests.support import (
    DATABASES,
    GANSU,
    GIVER,
    MOTHER,
    TEST_OUTBOX,
    XINJIANG,
    ErrorSeen,
    LoopThread,
    Stack,
    empty_database,
    error_of,
    start_stack,
    ts,
    unique_id,
    unique_ref,
)

# What a hostile call may end with: each says what was wrong with it. Never UNKNOWN or INTERNAL.
EXPECTED_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE,
})
# Refusals caused by state are stored and replayed (D15): the only row a refused call may add.
STORED_REFUSALS = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS})
UPPER_SNAKE_CASE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
MAX_TRANSFER_FEN = 200_000  # the national default, which the test stack's policy keeps
UNKNOWN_PROVINCE = "610000"  # a well-formed province code that is not in the routing table
ABSENT_WINDOW = "2001-01-01"  # a well-formed window that was never opened
MAX_SKEW_SECONDS = 120

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much])


# -- the stack ------------------------------------------------------------------------------------

class Hostile:
    """The module's running stack, its one known transfer and the tables whose rows must not change."""

    def __init__(self, stack: Stack, transfer_id: str, transfer_view: bytes, tables: list[str],
                 keys: dict[str, tuple[str, Any]]) -> None:
        self.stack = stack
        self.transfer_id = transfer_id
        self.transfer_view = transfer_view
        self.tables = tables
        self.keys = keys  # province -> (key_id, private key)

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"Hostile({self.stack.gateway.engine.url.drivername}, transfer {self.transfer_id})"

    def call(self, path: str, request: bytes, channel: grpc.Channel | None = None) -> ErrorSeen | None:
        """Send raw request bytes to `path`; the error seen, or None when the call answered OK."""
        chosen = channel or (self.stack.ops_channel if "/gongji.v1.Operations/" in path else self.stack.channel)
        method = chosen.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)
        answered: list[bytes] = []
        try:
            return error_of(lambda: answered.append(method(request, timeout=15)))
        except AssertionError:
            if answered:
                return None
            raise

    def snapshot(self) -> dict[str, Any]:
        """Every row of every table (`requests` by count: a stored refusal may add one)."""
        with self.stack.gateway.engine.connect() as conn:
            state: dict[str, Any] = {}
            for table in self.tables:
                if table == "requests":
                    state[table] = conn.execute(text("SELECT count(*) FROM requests")).scalar_one()
                else:
                    state[table] = sorted(repr(tuple(row)) for row in conn.execute(text(f"SELECT * FROM {table}")))
            return state

    def check_unchanged(self, before: dict[str, Any], seen: ErrorSeen | None) -> None:
        after = self.snapshot()
        changed = [t for t in self.tables if t != "requests" and before[t] != after[t]]
        assert not changed, f"a refused call changed {changed}"
        added = after["requests"] - before["requests"]
        allowed = 1 if seen is not None and seen.code in STORED_REFUSALS else 0
        assert 0 <= added <= allowed, f"a refused call added {added} request records ({seen})"

    def check_serving(self) -> None:
        """The server still answers, from its database: a valid GetTransfer of the known transfer, unchanged."""
        assert self.stack.get(self.transfer_id).SerializeToString(deterministic=True) == self.transfer_view

    def sign(self, code: str, payload_type: str, payload: bytes, key_of: str | None = None,
             signer_name: str | None = None) -> common_pb2.SignedEnvelope:
        """Signed with `key_of`'s private key (default: `code`'s own) under `code`'s or `signer_name`'s name."""
        key_id, private_key = self.keys[key_of or code]
        if key_of is not None and key_of != code:
            key_id = self.keys[code][0]  # the signer's own key_id, the other province's private key
        return envelope_to_proto(EnvelopeSigner(signer_name or code, key_id, private_key).sign(payload_type, payload))


def _all_tables(stack: Stack) -> list[str]:
    return sorted(inspect(stack.gateway.engine).get_table_names())


@pytest.fixture(scope="module", params=DATABASES)
def hostile(request: pytest.FixtureRequest, loop_thread: LoopThread,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    tmp_path: Path = tmp_path_factory.mktemp(f"hostile-{request.param}")
    urls = empty_database(request.param, tmp_path)
    url = next(urls)
    # Rate limits have their own tests (tests/api/test_rate_limits.py): here every call must reach the
    # gateway's checks. Nothing may change the database but the calls: no scheduled settlement close, and
    # no periodic audit checkpoint (signing the setup's entries a minute in would add a row mid-test).
    stack = start_stack(loop_thread, tmp_path, url, rate_limit_per_second=0, relation_query_rate_per_second=0,
                        settlement=SettlementPolicy(close_on_schedule=False),
                        outbox=dataclasses.replace(TEST_OUTBOX, checkpoint_interval_seconds=24 * 3600))
    try:
        transfer_id = stack.submit(stack.instruction()).transfer_id
        view = stack.wait_for_state(transfer_id, transfers_pb2.TRANSFER_STATE_COMMITTED)
        for province in (XINJIANG, GANSU):
            stack.wait_for_outbox_idle(province)
        keys = {code: (stub.key_id, load_private_key(stack.keys_dir / f"{stub.key_id}.key"))
                for code, stub in stack.stubs.items()}
        yield Hostile(stack, transfer_id, view.SerializeToString(deterministic=True), _all_tables(stack), keys)
    finally:
        stack.close()
        if isinstance(urls, Iterator):
            for _ in urls:  # runs the PostgreSQL generator's clean-up: the database is dropped
                pass


def _refused_cleanly(seen: ErrorSeen | None) -> ErrorSeen:
    assert seen is not None, "a hostile call was answered OK"
    assert seen.code in EXPECTED_CODES, f"{seen.code.name}: {seen.message!r}"
    assert UPPER_SNAKE_CASE.fullmatch(seen.reason), f"no ErrorInfo reason: {seen.code.name} {seen.message!r}"
    return seen


# -- wire-format helpers ----------------------------------------------------------------------------

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, value: bytes | int) -> bytes:
    tag = _varint(number << 3 | wire)
    if wire == VARINT:
        assert isinstance(value, int)
        return tag + _varint(value)
    assert isinstance(value, bytes)
    if wire == LEN:
        return tag + _varint(len(value)) + value
    return tag + value  # fixed32 / fixed64: the value is already 4 / 8 bytes


def _declared_wire_type(field: pb_descriptor.FieldDescriptor) -> int:
    if field.type in (field.TYPE_STRING, field.TYPE_BYTES, field.TYPE_MESSAGE) or field.is_repeated:
        return LEN
    return VARINT  # the contract has no fixed-width or floating-point fields


@st.composite
def _field_value(draw: st.DrawFn, wire: int) -> bytes | int:
    if wire == VARINT:
        return draw(st.integers(0, 2**64 - 1))
    if wire == FIXED64:
        return draw(st.binary(min_size=8, max_size=8))
    if wire == FIXED32:
        return draw(st.binary(min_size=4, max_size=4))
    return draw(st.binary(max_size=64))


def _leaves(descriptor: pb_descriptor.Descriptor, prefix: str = "",
            depth: int = 0) -> list[tuple[str, pb_descriptor.FieldDescriptor]]:
    """Every scalar field of a message, nested ones as dotted paths (header.created_at.seconds)."""
    found = []
    for field in descriptor.fields:
        path = prefix + field.name
        if field.type == field.TYPE_MESSAGE:
            if not field.is_repeated and depth < 2:
                found += _leaves(field.message_type, path + ".", depth + 1)
        elif not field.is_repeated:
            found.append((path, field))
    return found


def _set(message: pb_message.Message, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    target = message
    for name in parents:
        target = getattr(target, name)
    setattr(target, leaf, value)


def _int_range(field: pb_descriptor.FieldDescriptor) -> tuple[int, int]:
    return INT64 if field.cpp_type in (field.CPPTYPE_INT64,) else INT32


def _extremes(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([low, low + 1, -1, 0, 1, high - 1, high]), st.integers(low, high))


# Strings and bytes as a hostile client sends them: anything short, NULs, and enormous values that
# still fit in one message (a 256 KiB limit; 60 000 three-byte characters are 180 KB).
ODD_TEXT = st.one_of(
    st.text(max_size=80),
    st.builds(lambda c, n: c * n, st.sampled_from(["9", "A", "\x00", "中", "-", " ", "\U0001f600"]),
              st.integers(65, 40_000)),
)
ODD_BYTES = st.one_of(st.binary(max_size=80), st.integers(65, 150_000).map(lambda n: b"\xff" * n))


def _timestamp_strategy() -> st.SearchStrategy[Timestamp]:
    return st.builds(lambda s, n: Timestamp(seconds=s, nanos=n), _extremes(*INT64), _extremes(*INT32))


# -- the signed RPCs and their base messages --------------------------------------------------------

def _header(h: Hostile, sender: str, receiver: str = "gateway", message_id: str | None = None) -> common_pb2.Header:
    return common_pb2.Header(message_id=message_id or unique_id("fz"), sender=sender, receiver=receiver,
                             created_at=ts(h.stack.clock.now()))


def _person(person: tuple[str, str], pooling_area: str | None = None) -> common_pb2.PersonRef:
    return common_pb2.PersonRef(id_number=person[0], pooling_area=pooling_area or person[1])


@dataclass(frozen=True)
class SignedRpc:
    service: str
    method: str
    request: type[pb_message.Message]
    envelope_field: str
    signer: str  # the province that would legitimately sign it
    base: Callable[[Hostile], pb_message.Message]  # well formed, correctly signed, refused for a business reason
    why_refused: str
    reason: str  # the base's refusal: a business reason, so every mutation is judged by the checks before it

    @property
    def path(self) -> str:
        return f"/gongji.v1.{self.service}/{self.method}"

    def encode(self, envelope: common_pb2.SignedEnvelope) -> bytes:
        return self.request(**{self.envelope_field: envelope}).SerializeToString()


SIGNED_RPCS = [
    SignedRpc("Transfers", "SubmitTransfer", transfers_pb2.SubmitTransferRequest, "instruction", XINJIANG,
              lambda h: h.stack.instruction(amount_fen=MAX_TRANSFER_FEN + 1),
              "over the policy's largest transfer (a stored refusal)", "AMOUNT_OVER_LIMIT"),
    SignedRpc("Transfers", "ConfirmTransfer", transfers_pb2.ConfirmTransferRequest, "confirmation", GANSU,
              lambda h: transfers_pb2.TransferConfirmation(
                  header=_header(h, GANSU), transfer_id=h.transfer_id,
                  decision=transfers_pb2.CONFIRMATION_DECISION_CREDITED),
              "the transfer is already COMMITTED (a stored refusal)", "TRANSFER_ALREADY_FINAL"),
    SignedRpc("Transfers", "GetTransfer", transfers_pb2.GetTransferRequest, "query", XINJIANG,
              lambda h: transfers_pb2.TransferQuery(header=_header(h, XINJIANG), transfer_id=unique_id("absent")),
              "no such transfer", "TRANSFER_NOT_FOUND"),
    SignedRpc("Relations", "VerifyRelation", relations_pb2.VerifyRelationRequest, "query", XINJIANG,
              lambda h: relations_pb2.RelationQuery(
                  header=_header(h, XINJIANG, UNKNOWN_PROVINCE), giver=_person(GIVER),
                  receiver=_person(MOTHER, "610100"), relation_code="52"),
              "the receiver's province is not in the routing table", "UNKNOWN_PROVINCE"),
    SignedRpc("Relations", "ProposeBinding", relations_pb2.ProposeBindingRequest, "proposal", XINJIANG,
              lambda h: relations_pb2.BindingProposal(
                  header=_header(h, XINJIANG, UNKNOWN_PROVINCE), giver=_person(GIVER),
                  receiver=_person(MOTHER, "610100"), relation_code="52",
                  commitment=relations_pb2.Commitment(letter_version="2024-01", accepted_at=ts(h.stack.clock.now())),
                  consent_by=ts(h.stack.clock.now() + timedelta(hours=1))),
              "the receiver's province is not in the routing table", "UNKNOWN_PROVINCE"),
    SignedRpc("Relations", "AcceptBinding", relations_pb2.AcceptBindingRequest, "acceptance", GANSU,
              lambda h: relations_pb2.BindingAcceptance(
                  header=_header(h, GANSU), binding_id=h.stack.binding_id,
                  decision=relations_pb2.CONSENT_DECISION_ACCEPT,
                  attestation=relations_pb2.Attestation(method=relations_pb2.ATTESTATION_METHOD_FACE,
                                                        evidence_ref="ev-1", attested_at=ts(h.stack.clock.now()))),
              "the binding is ACTIVE, not PROPOSED (a stored refusal)", "BINDING_NOT_PROPOSED"),
    SignedRpc("Relations", "DissolveBinding", relations_pb2.DissolveBindingRequest, "dissolution", XINJIANG,
              lambda h: relations_pb2.BindingDissolution(header=_header(h, XINJIANG),
                                                         binding_id=unique_id("absent"), reason="not upper case"),
              "a malformed reason, and no such binding", "INVALID_REASON"),
    SignedRpc("Relations", "GetBinding", relations_pb2.GetBindingRequest, "query", XINJIANG,
              lambda h: relations_pb2.BindingQuery(header=_header(h, XINJIANG), binding_id=unique_id("absent")),
              "no such binding", "BINDING_NOT_FOUND"),
    SignedRpc("Relations", "ReportMemberChange", relations_pb2.ReportMemberChangeRequest, "change", GANSU,
              lambda h: relations_pb2.MemberChange(
                  header=_header(h, GANSU, GANSU), person=_person(MOTHER, "650500"),
                  kind=relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED, effective_at=ts(h.stack.clock.now())),
              "addressed to a province, not the gateway, and a person insured elsewhere", "WRONG_RECEIVER"),
    SignedRpc("Settlements", "GetSettlement", settlements_pb2.GetSettlementRequest, "query", XINJIANG,
              lambda h: settlements_pb2.SettlementQuery(header=_header(h, XINJIANG), window_id=ABSENT_WINDOW),
              "no such window", "SETTLEMENT_WINDOW_NOT_FOUND"),
    SignedRpc("Settlements", "AcknowledgeSettlement", settlements_pb2.AcknowledgeSettlementRequest,
              "acknowledgement", XINJIANG,
              lambda h: settlements_pb2.SettlementAcknowledgement(header=_header(h, XINJIANG),
                                                                  window_id=ABSENT_WINDOW, figures_sha256=bytes(32)),
              "no such window", "SETTLEMENT_WINDOW_NOT_FOUND"),
    SignedRpc("Quotas", "GrantQuota", quotas_pb2.GrantQuotaRequest, "grant", XINJIANG,
              lambda h: quotas_pb2.QuotaGrant(header=_header(h, XINJIANG), binding_id=h.stack.binding_id,
                                              giver=_person(("650502198001011236", "650500")), quota_fen=100_000,
                                              freeze_ref="frz-1"),
              "the giver is not the binding's (a stored refusal)", "BINDING_MISMATCH"),
    SignedRpc("Quotas", "ConsumeQuota", quotas_pb2.ConsumeQuotaRequest, "consumption", GANSU,
              lambda h: quotas_pb2.QuotaConsumption(
                  header=_header(h, GANSU), binding_id=h.stack.binding_id, receiver=_person(MOTHER), amount_fen=1_000,
                  kind=quotas_pb2.CONSUMPTION_KIND_MEDICAL, settlement_ref=unique_ref("stl"),
                  care_pooling_area="620100", own_account_used_fen=0, own_account_balance_fen=1),
              "the receiver's own account still has money (a stored refusal)", "OWN_ACCOUNT_NOT_FIRST"),
    SignedRpc("Quotas", "ReverseConsumption", quotas_pb2.ReverseConsumptionRequest, "reversal", GANSU,
              lambda h: quotas_pb2.ConsumptionReversal(header=_header(h, GANSU), binding_id=h.stack.binding_id,
                                                       settlement_ref=unique_ref("absent"), amount_fen=1,
                                                       reason="DRUG_RETURNED"),
              "no such consumption", "CONSUMPTION_NOT_FOUND"),
    SignedRpc("Quotas", "GetQuota", quotas_pb2.GetQuotaRequest, "query", XINJIANG,
              lambda h: quotas_pb2.QuotaQuery(header=_header(h, XINJIANG), binding_id=unique_id("absent")),
              "no such binding", "BINDING_NOT_FOUND"),
]

PAYLOAD_TYPES = sorted(
    message.full_name
    for module in (common_pb2, transfers_pb2, relations_pb2, settlements_pb2, operations_pb2, quotas_pb2)
    for message in module.DESCRIPTOR.message_types_by_name.values()
)


# -- mutations: each draws what it needs and returns (what it did, the request bytes) ----------------

Mutation = Callable[[st.DataObject, Hostile, SignedRpc, pb_message.Message], tuple[str, bytes]]


def _signed(h: Hostile, rpc: SignedRpc, base: pb_message.Message, payload: bytes) -> bytes:
    """`payload` in an envelope of `base`'s type, signed by the province that would rightly sign it."""
    return rpc.encode(h.sign(rpc.signer, base.DESCRIPTOR.full_name, payload))


def random_payload(data: st.DataObject, h: Hostile, rpc: SignedRpc, base: pb_message.Message) -> tuple[str, bytes]:
    payload = data.draw(st.binary(max_size=512), label="payload")
    return "payload of random bytes", _signed(h, rpc, base, payload)


def truncated(data: st.DataObject, h: Hostile, rpc: SignedRpc, base: pb_message.Message) -> tuple[str, bytes]:
    full = base.SerializeToString()
    # Drawn independently of the length, which varies with the base's ids and times (hypothesis replays draws).
    cut = data.draw(st.integers(0, 2**16), label="cut") % len(full)
    return f"payload truncated to {cut} of {len(full)} bytes", _signed(h, rpc, base, full[:cut])


def unknown_field(data: st.DataObject, h: Hostile, rpc: SignedRpc, base: pb_message.Message) -> tuple[str, bytes]:
    defined = {f.number for f in base.DESCRIPTOR.fields}
    number = data.draw(st.integers(1, 2**29 - 1).filter(lambda n: n not in defined and not 19000 <= n <= 19999),
                       label="field number")
    wire = data.draw(st.sampled_from([VARINT, FIXED64, LEN, FIXED32]), label="wire type")
    extra = _field(number, wire, data.draw(_field_value(wire)))
    where = data.draw(st.sampled_from(["message", "header"]), label="where")
    if where == "message":
        payload = base.SerializeToString() + extra
    else:  # inside the header: fields may come in any order, so the header goes first, re-framed
        header = base.header.SerializeToString() + extra
        rest = type(base)()
        rest.CopyFrom(base)
        rest.ClearField("header")
        payload = _field(1, LEN, header) + rest.SerializeToString()
    return f"unknown field {number} (wire type {wire}) in the {where}", _signed(h, rpc, base, payload)


def wrong_wire_type(data: st.DataObject, h: Hostile, rpc: SignedRpc, base: pb_message.Message) -> tuple[str, bytes]:
    field = data.draw(st.sampled_from(list(base.DESCRIPTOR.fields)), label="field")
    wire = data.draw(st.sampled_from([w for w in (VARINT, FIXED64, LEN, FIXED32) if w != _declared_wire_type(field)]),
                     label="wire type")
    payload = base.SerializeToString() + _field(field.number, wire, data.draw(_field_value(wire)))
    return f"{field.name} sent with wire type {wire}", _signed(h, rpc, base, payload)


def odd_value(data: st.DataObject, h: Hostile, rpc: SignedRpc, base: pb_message.Message) -> tuple[str, bytes]:
    """A string oversized or strange, or a number at or beyond the edges of what the field means."""
    path, field = data.draw(st.sampled_from(_leaves(base.DESCRIPTOR)), label="field")
    value: Any
    if field.type == field.TYPE_STRING:
        value = data.draw(ODD_TEXT, label="value")
    elif field.type == field.TYPE_BYTES:
        value = data.draw(ODD_BYTES, label="value")
    elif field.type == field.TYPE_BOOL:
        value = data.draw(st.booleans())
    else:
        value = data.draw(_extremes(*_int_range(field)), label="value")
        # Only amounts the gateway must refuse: within (0, limit] the instruction would be valid.
        assume(not (rpc.method == "SubmitTransfer" and path == "amount_fen" and 0 < value <= MAX_TRANSFER_FEN))
    message = type(base)()
    message.CopyFrom(base)
    _set(message, path, value)
    shown = repr(value) if not isinstance(value, str | bytes) or len(value) <= 40 else f"{len(value)} × {value[:1]!r}"
    return f"{path} = {shown}", _signed(h, rpc, base, message.SerializeToString())


def stale(data: st.DataObject, h: Hostile, rpc: SignedRpc, base: pb_message.Message) -> tuple[str, bytes]:
    seconds = data.draw(st.integers(MAX_SKEW_SECONDS + 10, 10**10), label="seconds away")
    sign = data.draw(st.sampled_from([-1, 1]), label="direction")
    message = type(base)()
    message.CopyFrom(base)
    message.header.created_at.CopyFrom(ts(h.stack.clock.now() + timedelta(seconds=sign * seconds)))
    return f"created_at {sign * seconds} s from now", _signed(h, rpc, base, message.SerializeToString())


def wrong_payload_type(data: st.DataObject, h: Hostile, rpc: SignedRpc,
                       base: pb_message.Message) -> tuple[str, bytes]:
    expected = base.DESCRIPTOR.full_name
    payload_type = data.draw(st.one_of(st.sampled_from(PAYLOAD_TYPES), ODD_TEXT), label="payload_type")
    assume(payload_type != expected)
    payload = base.SerializeToString()
    if payload_type.isascii():  # signed as that type: the signature is good, the type is not
        envelope = h.sign(rpc.signer, payload_type, payload)
    else:  # the signature input is ASCII: sign as the right type, then change the type
        envelope = h.sign(rpc.signer, expected, payload)
        envelope.payload_type = payload_type
    return f"payload_type {payload_type[:60]!r}", rpc.encode(envelope)


def other_province(data: st.DataObject, h: Hostile, rpc: SignedRpc, base: pb_message.Message) -> tuple[str, bytes]:
    other = GANSU if rpc.signer == XINJIANG else XINJIANG
    how = data.draw(st.sampled_from(["signed by the other", "other's key_id", "other's private key"]), label="how")
    payload, payload_type = base.SerializeToString(), base.DESCRIPTOR.full_name
    if how == "signed by the other":  # a valid signature of the other province over this province's message
        envelope = h.sign(other, payload_type, payload)
    elif how == "other's key_id":  # claims to be the rightful signer, with the other province's key
        other_key_id, other_private = h.keys[other]
        envelope = envelope_to_proto(EnvelopeSigner(rpc.signer, other_key_id, other_private).sign(payload_type,
                                                                                                  payload))
    else:  # the rightful signer's key_id, signed with the other province's private key
        envelope = h.sign(rpc.signer, payload_type, payload, key_of=other)
    return how, rpc.encode(envelope)


def bad_signature(data: st.DataObject, h: Hostile, rpc: SignedRpc, base: pb_message.Message) -> tuple[str, bytes]:
    envelope = h.sign(rpc.signer, base.DESCRIPTOR.full_name, base.SerializeToString())
    how = data.draw(st.sampled_from(["random", "flipped bit", "alg", "key_id", "signer"]), label="how")
    if how == "random":
        envelope.signature = data.draw(ODD_BYTES, label="signature")
    elif how == "flipped bit":
        bit = data.draw(st.integers(0, len(envelope.signature) * 8 - 1), label="bit")
        flipped = bytearray(envelope.signature)
        flipped[bit // 8] ^= 1 << (bit % 8)
        envelope.signature = bytes(flipped)
    elif how == "alg":
        envelope.alg = data.draw(ODD_TEXT.filter(lambda a: a != "ed25519"), label="alg")
    elif how == "key_id":
        envelope.key_id = data.draw(ODD_TEXT.filter(lambda k: k not in {key for key, _ in h.keys.values()}),
                                    label="key_id")
    else:
        envelope.signer = data.draw(ODD_TEXT.filter(lambda s: s != rpc.signer), label="signer")
    return f"bad signature: {how}", rpc.encode(envelope)


def unknown_field_in_request(data: st.DataObject, h: Hostile, rpc: SignedRpc,
                             base: pb_message.Message) -> tuple[str, bytes]:
    """Fields the request (outside the signed payload) does not define: ignored, the base is still refused."""
    number = data.draw(st.integers(2, 2**29 - 1).filter(lambda n: not 19000 <= n <= 19999), label="field number")
    wire = data.draw(st.sampled_from([VARINT, FIXED64, LEN, FIXED32]), label="wire type")
    request = _signed(h, rpc, base, base.SerializeToString())
    return f"request with unknown field {number}", request + _field(number, wire, data.draw(_field_value(wire)))


MUTATIONS: list[Mutation] = [random_payload, truncated, unknown_field, wrong_wire_type, odd_value, stale,
                             wrong_payload_type, other_province, bad_signature, unknown_field_in_request]


@pytest.mark.parametrize("rpc", SIGNED_RPCS, ids=lambda rpc: rpc.method)
@FUZZ
@given(data=st.data())
def test_every_signed_rpc_refuses_malformed_envelopes_and_payloads(hostile: Hostile, rpc: SignedRpc,
                                                                   data: st.DataObject) -> None:
    base = rpc.base(hostile)
    mutation = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    what, request = mutation(data, hostile, rpc, base)
    note(f"{rpc.method}: {what} (the base is refused because {rpc.why_refused})")
    before = hostile.snapshot()
    seen = _refused_cleanly(hostile.call(rpc.path, request))
    note(f"-> {seen.code.name} {seen.reason}")
    hostile.check_unchanged(before, seen)
    hostile.check_serving()


@pytest.mark.parametrize("rpc", SIGNED_RPCS, ids=lambda rpc: rpc.method)
def test_every_base_message_is_refused_for_its_business_reason(hostile: Hostile, rpc: SignedRpc) -> None:
    # Guards the fuzzer's premise: unmutated, each base is signed well and still refused.
    base = rpc.base(hostile)
    before = hostile.snapshot()
    seen = _refused_cleanly(hostile.call(rpc.path, rpc.encode(hostile.sign(rpc.signer, base.DESCRIPTOR.full_name,
                                                                         base.SerializeToString()))))
    assert seen.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
                         grpc.StatusCode.INVALID_ARGUMENT), seen
    assert seen.reason == rpc.reason, (rpc.method, seen)
    hostile.check_unchanged(before, seen)


# -- raw request bytes, every method ------------------------------------------------------------------

def _methods(module: Any, service: str) -> list[tuple[str, Any]]:
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return [(f"/{descriptor.full_name}/{m.name}", m) for m in descriptor.methods]


ALL_METHODS = (_methods(transfers_pb2, "Transfers") + _methods(relations_pb2, "Relations")
               + _methods(settlements_pb2, "Settlements") + _methods(quotas_pb2, "Quotas")
               + _methods(operations_pb2, "Operations"))
READ_ONLY_OPERATIONS = {"ListProvinces", "ListTransfers", "GetStats", "GetSettlementWindow", "ListSettlementWindows",
                        "InspectTransfer", "ListBindings", "InspectBinding", "InspectQuota"}


def _parses(raw: bytes, message_class: Any) -> pb_message.Message | None:
    try:
        return message_class.FromString(raw)  # type: ignore[no-any-return]
    except pb_message.DecodeError:
        return None


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_random_request_bytes_get_a_clear_error(hostile: Hostile, data: st.DataObject) -> None:
    path, method = data.draw(st.sampled_from(ALL_METHODS), label="method")
    raw = data.draw(st.one_of(st.binary(max_size=2048), st.builds(
        lambda prefix, junk: prefix + junk, st.sampled_from([b"\x0a", b"\x0a\x80\x01", b"\x12\x05", b"\x08"]),
        st.binary(max_size=64))), label="request bytes")
    parsed = _parses(raw, _request_class(method))
    if method.server_streaming:  # WatchTransfers: a request that parses as a valid cursor watches for ever
        assume(parsed is None or (not getattr(parsed, "from_cursor", "x").isdigit() and parsed.from_cursor != ""))
    elif path.startswith("/gongji.v1.Operations/") and method.name not in READ_ONLY_OPERATIONS:
        # Operators are trusted to change things: bytes that parse may be a real order (an empty
        # CloseSettlementWindow closes the open window). Those are fuzzed field by field below.
        assume(parsed is None)
    note(f"{path}: {raw[:80]!r} ({'parses' if parsed is not None else 'does not parse'})")
    before = hostile.snapshot()
    if method.server_streaming:
        seen: ErrorSeen | None = _stream_error(hostile, path, raw)
    else:
        seen = hostile.call(path, raw)
    if seen is None:
        # Bytes that happen to parse into a well-formed read are answered; nothing else may be.
        assert method.name in READ_ONLY_OPERATIONS and parsed is not None, f"{path} answered OK to random bytes"
    else:
        _refused_cleanly(seen)
        if parsed is None:
            assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"), seen
    hostile.check_unchanged(before, seen)
    hostile.check_serving()


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x03\x12\x01\xff", b"\x08\x80"])
def test_undecodable_request_bytes_are_an_invalid_argument(hostile: Hostile, raw: bytes) -> None:
    # Left to gRPC, a request that does not parse ended as UNKNOWN with the parser's exception text; the
    # error interceptor now parses requests itself and answers INVALID_ARGUMENT / MALFORMED_REQUEST.
    for path in ("/gongji.v1.Transfers/SubmitTransfer", "/gongji.v1.Operations/ListTransfers"):
        seen = hostile.call(path, raw)
        assert seen is not None and (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                 "MALFORMED_REQUEST"), seen
    hostile.check_serving()


def _request_class(method: Any) -> Any:
    for module in (transfers_pb2, relations_pb2, settlements_pb2, quotas_pb2, operations_pb2):
        found = getattr(module, method.input_type.name, None)
        if found is not None and found.DESCRIPTOR is method.input_type:
            return found
    raise AssertionError(f"no class for {method.input_type.full_name}")


def _stream_error(h: Hostile, path: str, request: bytes) -> ErrorSeen | None:
    stream = h.stack.ops_channel.unary_stream(path, request_serializer=bytes, response_deserializer=bytes)
    answered: list[bytes] = []
    try:
        return error_of(lambda: answered.extend(stream(request, timeout=15)))
    except AssertionError:
        if answered:
            return None
        raise


# -- the operators' RPCs that take input --------------------------------------------------------------

PROVINCE_CODE = re.compile(r"[0-9]{2}0000")
KEY_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
WINDOW_ID = re.compile(r"Q?[0-9]{4}-[0-9]{2}(-[0-9]{2})?")  # a transfers' window, or a clearing month (Q10)
POLICY_OUT_OF_RANGE: dict[str, st.SearchStrategy[int]] = {
    "daily_transfer_limit": st.one_of(st.integers(INT32[0], 0), st.integers(1_000_001, INT32[1])),
    "max_transfer_fen": st.integers(INT64[0], 0),
    "blackout_start_minute": st.one_of(st.integers(INT32[0], -1), st.integers(1440, INT32[1])),
    "blackout_end_minute": st.one_of(st.integers(INT32[0], -1), st.integers(1440, INT32[1])),
    "return_hour": st.one_of(st.integers(INT32[0], -1), st.integers(24, INT32[1])),
    "delivery_deadline_seconds": st.one_of(st.integers(INT32[0], 0), st.integers(7 * 24 * 3600 + 1, INT32[1])),
}
UNKNOWN_STATUS = st.integers(*INT32).filter(lambda v: v not in (0, 1, 2))
BAD_ENDPOINT = st.one_of(
    st.text(max_size=300).filter(lambda e: ":" not in e),
    st.builds(lambda n: "127.0.0.1:" + "9" * n, st.integers(6, 20_000)),  # a port of 20 000 digits
    st.sampled_from(["127.0.0.1:0", "127.0.0.1:65536", ":50051", "127.0.0.1:-1", "127.0.0.1:５００５１",
                     "a\x00b:1"]),
    st.integers(262, 100_000).map(lambda n: "h" * n + ":1"),
)
OUT_OF_RANGE_TIME = st.one_of(
    st.builds(lambda s: Timestamp(seconds=s), st.one_of(st.integers(INT64[0], -62135596801),
                                                        st.integers(253402300800, INT64[1]))),
    st.builds(lambda n: Timestamp(seconds=0, nanos=n), st.one_of(st.integers(INT32[0], -1),
                                                                 st.integers(10**9, INT32[1]))),
)


def _key(key_id: str | None = None) -> operations_pb2.ProvinceKey:
    return operations_pb2.ProvinceKey(key_id=key_id or unique_id("k"), alg="ed25519",
                                      public_key=hashlib.sha256(unique_id().encode()).digest())


@st.composite
def _bad_key(draw: st.DrawFn, h: Hostile) -> operations_pb2.ProvinceKey:
    key = _key()
    how = draw(st.sampled_from(["key_id", "alg", "public_key", "validity", "out-of-range time", "taken"]))
    if how == "key_id":
        key.key_id = draw(ODD_TEXT.filter(lambda k: not KEY_ID.fullmatch(k)))
    elif how == "alg":
        key.alg = draw(ODD_TEXT.filter(lambda a: a not in ("", "ed25519")))
    elif how == "public_key":
        key.public_key = draw(ODD_BYTES.filter(lambda k: len(k) != 32))
    elif how == "validity":
        start = draw(st.integers(-62135596800, 253402300799))
        key.valid_from.CopyFrom(Timestamp(seconds=start))
        key.valid_until.CopyFrom(Timestamp(seconds=draw(st.integers(-62135596800, start))))
    elif how == "out-of-range time":
        getattr(key, draw(st.sampled_from(["valid_from", "valid_until"]))).CopyFrom(draw(OUT_OF_RANGE_TIME))
    else:
        key.key_id = h.keys[XINJIANG][0]
    return key


@st.composite
def register_province(draw: st.DrawFn, h: Hostile) -> tuple[str, pb_message.Message, bool]:
    province = operations_pb2.Province(code=UNKNOWN_PROVINCE, name="陕西", endpoint="127.0.0.1:1", keys=[_key()])
    how = draw(st.sampled_from(["code", "name", "endpoint", "status", "no keys", "key", "duplicate key", "policy"]))
    if how == "code":
        province.code = draw(st.one_of(ODD_TEXT.filter(lambda c: not PROVINCE_CODE.fullmatch(c)),
                                       st.sampled_from([XINJIANG, GANSU])))
    elif how == "name":
        province.name = draw(st.one_of(st.just(""), st.text(min_size=65, max_size=40_000)))
    elif how == "endpoint":
        province.endpoint = draw(BAD_ENDPOINT)
    elif how == "status":
        province.status = draw(UNKNOWN_STATUS)  # type: ignore[assignment]
    elif how == "no keys":
        del province.keys[:]
    elif how == "key":
        province.keys[0].CopyFrom(draw(_bad_key(h)))
    elif how == "duplicate key":
        province.keys.append(_key(province.keys[0].key_id))
    else:
        name = draw(st.sampled_from(sorted(POLICY_OUT_OF_RANGE)))
        setattr(province.policy, name, draw(POLICY_OUT_OF_RANGE[name]))
    return how, operations_pb2.RegisterProvinceRequest(province=province), False


@st.composite
def update_province(draw: st.DrawFn, h: Hostile) -> tuple[str, pb_message.Message, bool]:
    request = operations_pb2.UpdateProvinceRequest(code=XINJIANG)
    how = draw(st.sampled_from(["code", "name", "endpoint", "status", "add key", "retire", "policy"]))
    if how == "code":  # a valid change, to a province that does not exist
        request.code = draw(ODD_TEXT.filter(lambda c: c not in (XINJIANG, GANSU)))
        request.endpoint = "127.0.0.1:1"
    elif how == "name":
        request.name = draw(st.one_of(st.just(""), st.text(min_size=65, max_size=40_000)))
    elif how == "endpoint":
        request.endpoint = draw(BAD_ENDPOINT)
    elif how == "status":
        request.status = draw(UNKNOWN_STATUS)  # type: ignore[assignment]
    elif how == "add key":
        request.add_keys.append(draw(_bad_key(h)))
    elif how == "retire":
        request.retire_key_ids.append(draw(ODD_TEXT.filter(lambda k: k not in {key for key, _ in h.keys.values()})))
    else:
        name = draw(st.sampled_from(sorted(POLICY_OUT_OF_RANGE)))
        setattr(request.policy, name, draw(POLICY_OUT_OF_RANGE[name]))
    return how, request, False


PAGE_TOKEN = st.one_of(
    ODD_TEXT,
    # Tokens shaped like the gateway's own (base64 of "<time>|<transfer_id>") with hostile parts.
    st.builds(lambda at, tid: base64.urlsafe_b64encode(f"{at}|{tid}".encode()).decode(),
              st.sampled_from(["2026-01-01T00:00:00+00:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                               "2026-01-01", "x"]),
              st.one_of(st.sampled_from(["tr-1", "a\x00b", "x" * 100_000]), ODD_TEXT)),
)


@st.composite
def list_transfers(draw: st.DrawFn, h: Hostile) -> tuple[str, pb_message.Message, bool]:
    # One hostile filter at a time, the others valid, so that every check is reached, not only the first.
    request = operations_pb2.ListTransfersRequest(states=[transfers_pb2.TRANSFER_STATE_COMMITTED],
                                                  giver_province=XINJIANG, page_size=10)
    how = draw(st.sampled_from(["states", "giver_province", "receiver_province", "created_from", "created_to",
                                "page_size", "page_token", "order"]))
    if how == "states":
        request.states[:] = draw(st.lists(_extremes(*INT32), max_size=4))
    elif how in ("giver_province", "receiver_province"):
        setattr(request, how, draw(ODD_TEXT))
    elif how in ("created_from", "created_to"):
        getattr(request, how).CopyFrom(draw(_timestamp_strategy()))
    elif how == "page_size":
        request.page_size = draw(_extremes(*INT32))
    elif how == "order":
        request.order = draw(_extremes(*INT32))  # type: ignore[assignment]
    else:
        request.page_token = draw(PAGE_TOKEN)
        request.order = draw(st.sampled_from(list(operations_pb2.TransferOrder.values())))
    return how, request, True


WINDOW_TEXT = st.one_of(
    ODD_TEXT,
    st.from_regex(WINDOW_ID, fullmatch=True),
    st.sampled_from(["9999-12-31", "9999-12", "0000-01-01", "2024-02-30", "2024-13", "٢٠٢٤-٠١-٠١", "2999-01-01",
                     "Q9999-12", "Q0000-01", "Q2024-13", "Q2026-05-01", "q2026-05", "Q٢٠٢٤-٠١"]),
)


@st.composite
def inspect_transfer(draw: st.DrawFn, h: Hostile) -> tuple[str, pb_message.Message, bool]:
    return "transfer_id", operations_pb2.InspectTransferRequest(transfer_id=draw(ODD_TEXT)), True


@st.composite
def list_bindings(draw: st.DrawFn, h: Hostile) -> tuple[str, pb_message.Message, bool]:
    # One hostile filter at a time, the others valid, as for ListTransfers.
    request = operations_pb2.ListBindingsRequest(states=[relations_pb2.BINDING_STATE_ACTIVE], province=XINJIANG,
                                                 page_size=10)
    how = draw(st.sampled_from(["states", "province", "page_size", "page_token"]))
    if how == "states":
        request.states[:] = draw(st.lists(_extremes(*INT32), max_size=4))
    elif how == "province":
        request.province = draw(ODD_TEXT)
    elif how == "page_size":
        request.page_size = draw(_extremes(*INT32))
    else:
        request.page_token = draw(PAGE_TOKEN)
    return how, request, True


@st.composite
def inspect_binding(draw: st.DrawFn, h: Hostile) -> tuple[str, pb_message.Message, bool]:
    return "binding_id", operations_pb2.InspectBindingRequest(binding_id=draw(ODD_TEXT)), True


@st.composite
def inspect_quota(draw: st.DrawFn, h: Hostile) -> tuple[str, pb_message.Message, bool]:
    request = operations_pb2.InspectQuotaRequest(binding_id=h.stack.binding_id)
    how = draw(st.sampled_from(["binding_id", "page_size", "page_token"]))
    if how == "binding_id":
        request.binding_id = draw(ODD_TEXT)
    elif how == "page_size":
        request.page_size = draw(_extremes(*INT32))
    else:
        request.page_token = draw(ODD_TEXT)
    return how, request, True


@st.composite
def get_settlement_window(draw: st.DrawFn, h: Hostile) -> tuple[str, pb_message.Message, bool]:
    return "window_id", operations_pb2.GetSettlementWindowRequest(window_id=draw(WINDOW_TEXT)), True


@st.composite
def list_settlement_windows(draw: st.DrawFn, h: Hostile) -> tuple[str, pb_message.Message, bool]:
    request = operations_pb2.ListSettlementWindowsRequest(page_size=10)
    how = draw(st.sampled_from(["states", "page_size", "page_token", "kind"]))
    if how == "kind":
        request.kind = draw(_extremes(*INT32))
    elif how == "states":
        request.states[:] = draw(st.lists(_extremes(*INT32), max_size=4))
    elif how == "page_size":
        request.page_size = draw(_extremes(*INT32))
    else:
        request.page_token = draw(WINDOW_TEXT)
    return how, request, True


@st.composite
def close_settlement_window(draw: st.DrawFn, h: Hostile) -> tuple[str, pb_message.Message, bool]:
    # Only ids that must be refused: a well-formed past day would rightly close that window.
    window_id = draw(st.one_of(
        ODD_TEXT.filter(lambda w: w != "" and not WINDOW_ID.fullmatch(w)),
        st.sampled_from(["9999-12-31", "9999-12", "0000-01-01", "2024-02-30", "2024-13", "٢٠٢٤-٠١-٠١",
                         "2999-01-01", "2026-05",  # impossible, out of range, future, monthly while daily
                         "Q9999-12", "Q0000-01", "Q2024-13", "Q2999-01", "Q2026-05-01", "q2026-05"]),  # clearing
    ))
    # Forced or not: force only lets an empty window close, never one that cannot be.
    return "window_id", operations_pb2.CloseSettlementWindowRequest(window_id=window_id,
                                                                    force=draw(st.booleans())), False


@st.composite
def record_settlement_payment(draw: st.DrawFn, h: Hostile) -> tuple[str, pb_message.Message, bool]:
    payment = operations_pb2.PaymentRecord(from_province=XINJIANG, to_province=GANSU, bank="ICBC",
                                           serial_number="ICBC-1", date="2024-01-02")
    request = operations_pb2.RecordSettlementPaymentRequest(window_id=ABSENT_WINDOW, payments=[payment])
    how = draw(st.sampled_from(["window_id", "from_province", "to_province", "bank", "serial_number", "date",
                                "duplicate", "absent window"]))
    if how == "window_id":
        request.window_id = draw(ODD_TEXT.filter(lambda w: not WINDOW_ID.fullmatch(w)))
    elif how in ("from_province", "to_province"):
        setattr(payment, how, draw(ODD_TEXT.filter(lambda c: not PROVINCE_CODE.fullmatch(c))))
    elif how == "bank":
        payment.bank = draw(st.one_of(st.just(""), st.just(" "), st.text(min_size=65, max_size=40_000),
                                      st.just("bank\x00")))
    elif how == "serial_number":
        payment.serial_number = draw(ODD_TEXT.filter(lambda s: not re.fullmatch(r"[A-Za-z0-9\-_/.]{1,64}", s)))
    elif how == "date":
        payment.date = draw(st.one_of(ODD_TEXT, st.sampled_from(["2999-01-01", "2024-02-30", "٢٠٢٤-٠١-٠١"])))
    elif how == "duplicate":
        request.payments.append(payment)
    request.payments[0].CopyFrom(payment)
    return how, request, False


@st.composite
def watch_transfers(draw: st.DrawFn, h: Hostile) -> tuple[str, pb_message.Message, bool]:
    # A cursor the gateway could have given out would watch for ever: only ones it could not have.
    cursor = draw(st.one_of(
        ODD_TEXT.filter(lambda c: c != "" and not (c.isascii() and c.isdigit())),
        st.integers(2**63, 10**40).map(str),
        st.integers(20, 10_000).map(lambda n: "9" * n),
    ))
    return "from_cursor", operations_pb2.WatchTransfersRequest(from_cursor=cursor), False


OPERATIONS: dict[str, Callable[[Hostile], st.SearchStrategy[tuple[str, pb_message.Message, bool]]]] = {
    "RegisterProvince": register_province,
    "UpdateProvince": update_province,
    "ListTransfers": list_transfers,
    "InspectTransfer": inspect_transfer,
    "ListBindings": list_bindings,
    "InspectBinding": inspect_binding,
    "InspectQuota": inspect_quota,
    "GetSettlementWindow": get_settlement_window,
    "ListSettlementWindows": list_settlement_windows,
    "CloseSettlementWindow": close_settlement_window,
    "RecordSettlementPayment": record_settlement_payment,
    "WatchTransfers": watch_transfers,
}


@pytest.mark.parametrize("method", sorted(OPERATIONS))
@FUZZ
@given(data=st.data())
def test_operations_refuse_hostile_input(hostile: Hostile, method: str, data: st.DataObject) -> None:
    how, request, may_answer = data.draw(OPERATIONS[method](hostile), label="request")
    note(f"{method}: {how}: {str(request)[:300]!r}")
    path = f"/gongji.v1.Operations/{method}"
    before = hostile.snapshot()
    if method == "WatchTransfers":
        seen = _stream_error(hostile, path, request.SerializeToString())
    else:
        seen = hostile.call(path, request.SerializeToString())
    if seen is not None or not may_answer:
        seen = _refused_cleanly(seen)
        note(f"-> {seen.code.name} {seen.reason}")
    hostile.check_unchanged(before, seen)
    hostile.check_serving()


@pytest.mark.parametrize("window_id", ["9999-12-31", "0001-01-01", "9999-12", "2024-02-30", "2999-01-01",
                                       "Q9999-12", "Q0001-01", "Q2999-01"])
def test_windows_that_cannot_be_closed_are_refused_cleanly(hostile: Hostile, window_id: str) -> None:
    # Found by the fuzzer: the ends of the calendar ended CloseSettlementWindow as INTERNAL (OverflowError).
    before = hostile.snapshot()
    seen = _refused_cleanly(hostile.call("/gongji.v1.Operations/CloseSettlementWindow",
                                         operations_pb2.CloseSettlementWindowRequest(window_id=window_id)
                                         .SerializeToString()))
    assert seen.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), seen
    hostile.check_unchanged(before, seen)


# -- message size limits --------------------------------------------------------------------------------

def test_an_oversized_request_is_refused_and_the_server_keeps_serving(hostile: Hostile) -> None:
    # Settings.max_message_bytes (256 KiB) is gRPC's own receive limit: gRPC refuses the message before
    # any of the gateway's code runs, so this status carries no ErrorInfo. It is the one refusal without.
    oversized_payload = b"\x00" * (300 * 1024)
    submit = transfers_pb2.SubmitTransferRequest(
        instruction=hostile.sign(XINJIANG, "gongji.v1.TransferInstruction", oversized_payload)).SerializeToString()
    register = operations_pb2.RegisterProvinceRequest(province=operations_pb2.Province(
        code=UNKNOWN_PROVINCE, name="陕" * 100_000, endpoint="127.0.0.1:1", keys=[_key()])).SerializeToString()
    for path, request in (("/gongji.v1.Transfers/SubmitTransfer", submit),
                          ("/gongji.v1.Operations/RegisterProvince", register)):
        before = hostile.snapshot()
        seen = hostile.call(path, request)
        assert seen is not None and seen.code is grpc.StatusCode.RESOURCE_EXHAUSTED, seen
        hostile.check_unchanged(before, seen)
        hostile.check_serving()
    for channel in (hostile.stack.channel, hostile.stack.ops_channel):
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


ENORMOUS = "A" * 200_000  # fits in one message, but in no field


@pytest.mark.parametrize(("rpc_method", "path", "reason"), [
    ("SubmitTransfer", "header.message_id", "INVALID_MESSAGE_ID"),
    ("SubmitTransfer", "currency", "UNSUPPORTED_CURRENCY"),
    ("SubmitTransfer", "binding_id", "INVALID_MESSAGE_ID"),
    ("SubmitTransfer", "giver.id_number", "INVALID_ID_NUMBER"),
    ("ConfirmTransfer", "decline_reason", "INVALID_REASON"),
    ("ProposeBinding", "commitment.letter_version", "INVALID_REFERENCE"),
    ("AcceptBinding", "attestation.evidence_ref", "INVALID_REFERENCE"),
    ("DissolveBinding", "reason", "INVALID_REASON"),
    ("GrantQuota", "freeze_ref", "INVALID_REFERENCE"),
    ("ConsumeQuota", "settlement_ref", "INVALID_REFERENCE"),
    ("ReverseConsumption", "reason", "INVALID_REASON"),
    ("GetQuota", "binding_id", "INVALID_MESSAGE_ID"),
    ("AcknowledgeSettlement", "header.message_id", "INVALID_MESSAGE_ID"),
    ("AcknowledgeSettlement", "window_id", "INVALID_WINDOW_ID"),
])
def test_an_enormous_field_in_a_signed_payload_is_refused(hostile: Hostile, rpc_method: str, path: str,
                                                          reason: str) -> None:
    rpc = next(r for r in SIGNED_RPCS if r.method == rpc_method)
    message = rpc.base(hostile)
    _set(message, path, ENORMOUS)
    before = hostile.snapshot()
    seen = _refused_cleanly(hostile.call(rpc.path, _signed(hostile, rpc, message, message.SerializeToString())))
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), seen
    hostile.check_unchanged(before, seen)


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("name", "陕" * 60_000, "INVALID_NAME"),
    ("endpoint", "h" * 200_000 + ":50051", "INVALID_ENDPOINT"),
    ("endpoint", "127.0.0.1:" + "1" * 100_000, "INVALID_ENDPOINT"),
])
def test_an_enormous_province_field_is_refused(hostile: Hostile, field: str, value: str, reason: str) -> None:
    for method, request in (
        ("RegisterProvince", operations_pb2.RegisterProvinceRequest(province=operations_pb2.Province(
            code=UNKNOWN_PROVINCE, keys=[_key()], **{"name": "陕西", "endpoint": "127.0.0.1:1", field: value}))),
        ("UpdateProvince", operations_pb2.UpdateProvinceRequest(code=XINJIANG, **{field: value})),
    ):
        before = hostile.snapshot()
        seen = _refused_cleanly(hostile.call(f"/gongji.v1.Operations/{method}", request.SerializeToString()))
        assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), (method, seen)
        hostile.check_unchanged(before, seen)


def test_enormous_payment_fields_are_refused(hostile: Hostile) -> None:
    for field, reason in (("bank", "INVALID_BANK"), ("serial_number", "INVALID_SERIAL_NUMBER")):
        payment = operations_pb2.PaymentRecord(from_province=XINJIANG, to_province=GANSU, bank="ICBC",
                                               serial_number="ICBC-1", date="2024-01-02")
        setattr(payment, field, ENORMOUS)
        request = operations_pb2.RecordSettlementPaymentRequest(window_id=ABSENT_WINDOW, payments=[payment])
        seen = _refused_cleanly(hostile.call("/gongji.v1.Operations/RecordSettlementPayment",
                                             request.SerializeToString()))
        assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), seen


# -- and after all that ------------------------------------------------------------------------------

def test_after_the_fuzzing_a_valid_transfer_still_goes_through_end_to_end(hostile: Hostile) -> None:
    stack = hostile.stack
    instruction = stack.instruction()
    answer = stack.submit(instruction)
    stack.verify_receipt(answer.receipt, instruction.SerializeToString())
    committed = stack.wait_for_state(answer.transfer_id, transfers_pb2.TRANSFER_STATE_COMMITTED)
    assert committed.amount_fen == instruction.amount_fen
    assert stack.get(answer.transfer_id, signer=GANSU).state == transfers_pb2.TRANSFER_STATE_COMMITTED
    hostile.check_serving()
