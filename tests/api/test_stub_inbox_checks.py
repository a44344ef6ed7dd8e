"""What a stub province checks before it obeys: with mutual TLS only the gateway's certificate (a `gongji:gateway`
URI subjectAltName) reaches its inbox and only an operator's its control service, on a loopback port of its own;
every message the gateway signs must be addressed to it, and (but for settlement figures) fresh."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.security.keys import load_private_key
from gateway.security.signing import EnvelopeSigner
from gateway.security.tls import province_dns
from gateway.wire import envelope_to_proto
from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import (
    common_pb2,
    province_pb2,
    province_pb2_grpc,
    quotas_pb2,
    relations_pb2,
    settlements_pb2,
    transfers_pb2,
)
from scripts.devtls import DevCa
from tests.support import (
    GANSU,
    MOTHER,
    XINJIANG,
    LoopThread,
    Stack,
    error_of,
    secure_channel,
    start_stack,
    ts,
    unique_id,
)

STALE = timedelta(minutes=10)  # five times the stub's default window of 120 s


@pytest.fixture
def tls_stack(loop_thread: LoopThread, tmp_path: Path, sqlite_url: str) -> Iterator[Stack]:
    stack = start_stack(loop_thread, tmp_path, sqlite_url, tls_dir=tmp_path / "tls")
    yield stack
    stack.close()


def tls(stack: Stack) -> DevCa:
    assert stack.tls is not None
    return stack.tls


def inbox_as(stack: Stack, province: str, identity: str) -> province_pb2_grpc.ProvinceInboxStub:
    """`province`'s stub inbox, called with `identity`'s certificate ("gateway", "province-620000", ...)."""
    channel = secure_channel(stack.stubs[province].address, tls(stack), identity, province_dns(province))
    return province_pb2_grpc.ProvinceInboxStub(channel)


def control_as(stack: Stack, province: str, identity: str,
               address: str | None = None) -> control_pb2_grpc.StubControlStub:
    channel = secure_channel(address or stack.stubs[province].control_address, tls(stack), identity,
                             province_dns(province))
    return control_pb2_grpc.StubControlStub(channel)


def gateway_sign(stack: Stack, message: Any) -> common_pb2.SignedEnvelope:
    """Signed with the gateway's own key, exactly as it signs what it sends the provinces."""
    signer = EnvelopeSigner("gateway", "gateway-k1", load_private_key(stack.keys_dir / "gateway.key"))
    return envelope_to_proto(signer.sign(message.DESCRIPTOR.full_name, message.SerializeToString()))


def gateway_header(stack: Stack, receiver: str, age: timedelta = timedelta(0)) -> common_pb2.Header:
    return common_pb2.Header(message_id=unique_id("gw"), sender="gateway", receiver=receiver,
                             created_at=ts(stack.clock.now() - age))


def member_query(stack: Stack, receiver: str = GANSU, age: timedelta = timedelta(0)) -> province_pb2.CheckMemberRequest:
    query = province_pb2.MemberQuery(header=gateway_header(stack, receiver, age),
                                     person=common_pb2.PersonRef(id_number=MOTHER[0], pooling_area=MOTHER[1]))
    return province_pb2.CheckMemberRequest(query=gateway_sign(stack, query))


def issue_with_names(ca: DevCa, name: str, names: list[x509.GeneralName]) -> str:
    """A client certificate from the development CA whose subjectAltNames are exactly `names`."""
    ca_key = serialization.load_pem_private_key(ca.key_file.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_file.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gongji:gateway")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    (ca.folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (ca.folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return name


# -- who may call ------------------------------------------------------------------------------------------


def test_a_stubs_inbox_answers_the_gateways_certificate_only(tls_stack: Stack) -> None:
    stack = tls_stack
    answer = inbox_as(stack, GANSU, "gateway").CheckMember(member_query(stack), timeout=5)
    assert answer.status == province_pb2.MEMBER_STATUS_NORMAL
    # The same signed query from any other certificate of the CA: a province's, its own, an operator's.
    for province, identity in ((XINJIANG, f"province-{GANSU}"), (GANSU, f"province-{GANSU}"),
                               (GANSU, "operator-operator")):
        seen = error_of(lambda p=province, i=identity: inbox_as(stack, p, i).CheckMember(  # type: ignore[misc]
            member_query(stack, receiver=p), timeout=5))
        assert (seen.code, seen.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_THE_GATEWAY"), identity
    # Refused before anything is read: an outcome that would not even parse gets the same answer.
    seen = error_of(lambda: inbox_as(stack, GANSU, f"province-{XINJIANG}").NotifyOutcome(
        province_pb2.NotifyOutcomeRequest(), timeout=5))
    assert (seen.code, seen.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_THE_GATEWAY")


@pytest.mark.parametrize("names", [
    [x509.DNSName("gongji:gateway")],
    [x509.RFC822Name("gongji:gateway")],
    [x509.DNSName("gongji:gateway"), x509.UniformResourceIdentifier(f"gongji:province:{XINJIANG}")],
    [x509.UniformResourceIdentifier("gongji:gateway"), x509.UniformResourceIdentifier(f"gongji:province:{XINJIANG}")],
], ids=["dns", "email", "dns-beside-a-province-uri", "two-uris"])
def test_gongji_gateway_is_an_identity_only_as_the_one_uri_subject_alt_name(
        tls_stack: Stack, names: list[x509.GeneralName]) -> None:
    stack = tls_stack
    impostor = issue_with_names(tls(stack), "impostor", names)
    seen = error_of(lambda: inbox_as(stack, GANSU, impostor).CheckMember(member_query(stack), timeout=5))
    assert (seen.code, seen.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_THE_GATEWAY")
    # The same kind of certificate naming it as its one URI is the gateway's identity.
    genuine = issue_with_names(tls(stack), "uri-only", [x509.UniformResourceIdentifier("gongji:gateway")])
    assert inbox_as(stack, GANSU, genuine).CheckMember(member_query(stack), timeout=5).status == \
        province_pb2.MEMBER_STATUS_NORMAL


def test_the_control_service_has_its_own_loopback_port_for_operators_only(tls_stack: Stack) -> None:
    stack = tls_stack
    stub = stack.stubs[XINJIANG]
    assert stub.control_port != stub.port and stub.control_address.startswith("127.0.0.1:")
    snapshot = control_pb2.SnapshotRequest()
    # Not served beside the inbox, whoever asks.
    for identity in ("gateway", "operator-operator", f"province-{GANSU}"):
        seen = error_of(lambda i=identity: control_as(stack, XINJIANG, i, stub.address).Snapshot(  # type: ignore[misc]
            snapshot, timeout=5))
        assert seen.code == grpc.StatusCode.UNIMPLEMENTED, identity
    # On its own port: an operator steers it; Gansu's certificate (or the gateway's) does not.
    assert control_as(stack, XINJIANG, "operator-operator").Snapshot(snapshot, timeout=5).province == XINJIANG
    for identity in (f"province-{GANSU}", f"province-{XINJIANG}", "gateway"):
        seen = error_of(lambda i=identity: control_as(stack, XINJIANG, i).Configure(  # type: ignore[misc]
            control_pb2.Behaviour(fail_next_calls=5), timeout=5))
        assert (seen.code, seen.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_AN_OPERATOR"), identity
    # None of it took effect: the stub answers the gateway as before.
    assert inbox_as(stack, XINJIANG, "gateway").CheckMember(member_query(stack, receiver=XINJIANG), timeout=5).status \
        == province_pb2.MEMBER_STATUS_NOT_FOUND
    assert stack.snapshot(XINJIANG).calls_failed == 0


def test_plaintext_stubs_serve_control_on_its_own_port_too(loop_thread: LoopThread, tmp_path: Path,
                                                           sqlite_url: str) -> None:
    stack = start_stack(loop_thread, tmp_path, sqlite_url)
    try:
        stub = stack.stubs[GANSU]
        on_inbox = control_pb2_grpc.StubControlStub(grpc.insecure_channel(stub.address))
        seen = error_of(lambda: on_inbox.Snapshot(control_pb2.SnapshotRequest(), timeout=5))
        assert seen.code == grpc.StatusCode.UNIMPLEMENTED
        assert stack.snapshot(GANSU).province == GANSU
    finally:
        stack.close()


# -- what the gateway sends ---------------------------------------------------------------------------------


def delivery(stack: Stack, receiver: str, age: timedelta) -> province_pb2.DeliverTransferRequest:
    instruction = stack.sign(stack.instruction())  # Xinjiang's, for Gansu
    transfer_id = transfers_pb2.TransferInstruction.FromString(instruction.payload).header.message_id
    message = province_pb2.TransferDelivery(header=gateway_header(stack, receiver, age), transfer_id=transfer_id,
                                            instruction_sha256=hashlib.sha256(instruction.payload).digest())
    return province_pb2.DeliverTransferRequest(instruction=instruction, delivery=gateway_sign(stack, message))


def outcome(stack: Stack, receiver: str, age: timedelta) -> province_pb2.NotifyOutcomeRequest:
    message = province_pb2.Outcome(header=gateway_header(stack, receiver, age), transfer=province_pb2.TransferOutcome(
        transfer_id=unique_id("tr"), state=transfers_pb2.TRANSFER_STATE_COMMITTED, amount_fen=100))
    return province_pb2.NotifyOutcomeRequest(outcome=gateway_sign(stack, message))


def consent_request(stack: Stack, receiver: str, age: timedelta) -> province_pb2.RequestConsentRequest:
    proposal = stack.signed_proposal()  # Xinjiang's, for Gansu
    message = province_pb2.ConsentRequest(
        header=gateway_header(stack, receiver, age),
        binding_id=relations_pb2.BindingProposal.FromString(proposal.payload).header.message_id,
        proposal_sha256=hashlib.sha256(proposal.payload).digest(),
        consent_by=ts(stack.clock.now() + timedelta(hours=1)))
    return province_pb2.RequestConsentRequest(proposal=proposal, consent_request=gateway_sign(stack, message))


def figures(stack: Stack, receiver: str, age: timedelta) -> province_pb2.NotifySettlementRequest:
    message = settlements_pb2.SettlementFigures(
        header=gateway_header(stack, receiver, age), window_id=unique_id("w"),
        positions=[settlements_pb2.ProvincePosition(province=receiver, net_fen=0)])
    return province_pb2.NotifySettlementRequest(figures=gateway_sign(stack, message))


def quota_notice(stack: Stack, receiver: str, age: timedelta) -> province_pb2.NotifyQuotaRequest:
    message = province_pb2.QuotaNotice(
        header=gateway_header(stack, receiver, age), binding_id=unique_id("b"),
        change=province_pb2.QUOTA_CHANGE_GRANTED,
        amount_fen=100, quota=common_pb2.QuotaFigures(granted_fen=100, available_fen=100), version=1)
    return province_pb2.NotifyQuotaRequest(notice=gateway_sign(stack, message))


def consumption_notice(stack: Stack, receiver: str, age: timedelta) -> province_pb2.NotifyConsumptionRequest:
    message = province_pb2.ConsumptionNotice(
        header=gateway_header(stack, receiver, age), consumption=quotas_pb2.ConsumptionRecord(
            consumption_id=unique_id("c"), binding_id=unique_id("b"), settlement_ref="S1", drawn_fen=40),
        change=province_pb2.QUOTA_CHANGE_CONSUMED, amount_fen=40, clearing_window_id="Q2026-03",
        quota=common_pb2.QuotaFigures(granted_fen=100, consumed_fen=40, available_fen=60))
    return province_pb2.NotifyConsumptionRequest(notice=gateway_sign(stack, message))


SENDS: dict[str, tuple[Any, str]] = {
    "MemberQuery": (member_query, "CheckMember"),
    "TransferDelivery": (delivery, "DeliverTransfer"),
    "ConsentRequest": (consent_request, "RequestConsent"),
    "Outcome": (outcome, "NotifyOutcome"),
    "SettlementFigures": (figures, "NotifySettlement"),
    "QuotaNotice": (quota_notice, "NotifyQuota"),
    "ConsumptionNotice": (consumption_notice, "NotifyConsumption"),
}


def send(stack: Stack, kind: str, receiver: str = GANSU, age: timedelta = timedelta(0)) -> Any:
    """A message of `kind` the gateway signed, sent by the gateway (its certificate) to Gansu's stub."""
    build, method = SENDS[kind]
    return getattr(inbox_as(stack, GANSU, "gateway"), method)(build(stack, receiver, age), timeout=5)


def recorded(stack: Stack) -> tuple[int, ...]:
    """What Gansu's stub keeps of what it was sent: credits, notifications, consent requests, figures, notices."""
    snapshot = stack.snapshot(GANSU)
    return (len(snapshot.credits), len(snapshot.notifications), len(snapshot.consent_requests),
            len(snapshot.settlements), len(snapshot.quota_notices), len(snapshot.consumption_notices))


@pytest.mark.parametrize("kind", list(SENDS))
def test_a_gateway_message_addressed_to_another_province_is_refused(tls_stack: Stack, kind: str) -> None:
    # The gateway's genuine signature and certificate: a message meant for Xinjiang, replayed to Gansu.
    stack = tls_stack
    stack.configure(GANSU, settlement_ack_mode=control_pb2.SETTLEMENT_ACK_MODE_MANUAL)
    before = recorded(stack)
    seen = error_of(lambda: send(stack, kind, receiver=XINJIANG))
    assert (seen.code, seen.reason, seen.metadata.get("field")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "WRONG_RECEIVER", "header.receiver")
    assert recorded(stack) == before


@pytest.mark.parametrize("kind", [kind for kind in SENDS if kind != "SettlementFigures"])
@pytest.mark.parametrize("age", [STALE, -STALE], ids=["old", "ahead"])
def test_a_stale_gateway_message_is_refused(tls_stack: Stack, kind: str, age: timedelta) -> None:
    stack = tls_stack
    before = recorded(stack)
    seen = error_of(lambda: send(stack, kind, age=age))
    assert (seen.code, seen.reason, seen.metadata.get("field")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "STALE_MESSAGE", "header.created_at")
    assert recorded(stack) == before


def test_the_freshness_window_is_the_stubs_setting(tls_stack: Stack) -> None:
    stack = tls_stack
    assert send(stack, "MemberQuery", age=timedelta(seconds=100)).status == province_pb2.MEMBER_STATUS_NORMAL
    seen = error_of(lambda: send(stack, "MemberQuery", age=timedelta(seconds=140)))
    assert seen.reason == "STALE_MESSAGE"


def test_settlement_figures_resent_long_after_closing_are_still_taken(tls_stack: Stack) -> None:
    # The gateway signs a window's figures once, at closing, and resends those bytes until acknowledged.
    stack = tls_stack
    stack.configure(GANSU, settlement_ack_mode=control_pb2.SETTLEMENT_ACK_MODE_MANUAL)
    send(stack, "SettlementFigures", age=timedelta(days=2))
    assert len(stack.snapshot(GANSU).settlements) == 1


@pytest.mark.parametrize("kind", ["QuotaNotice", "ConsumptionNotice"])
def test_a_quota_notice_is_kept_once_per_message_id_and_only_with_the_gateways_signature(
        tls_stack: Stack, kind: str) -> None:
    stack = tls_stack
    build, method = SENDS[kind]
    request = build(stack, GANSU, timedelta(0))
    inbox = getattr(inbox_as(stack, GANSU, "gateway"), method)
    before = recorded(stack)
    # The same notice signed with Xinjiang's key, claiming the gateway's (the gateway's certificate calls): refused.
    forged = type(request)()
    forged.CopyFrom(request)
    forged.notice.signature = stack.sign(None, XINJIANG, request.notice.payload_type, request.notice.payload).signature
    seen = error_of(lambda: inbox(forged, timeout=5))
    assert (seen.code, seen.reason) == (grpc.StatusCode.UNAUTHENTICATED, "BAD_GATEWAY_SIGNATURE")
    assert recorded(stack) == before
    # The genuine notice, told twice: kept once, counted twice.
    inbox(request, timeout=5)
    inbox(request, timeout=5)
    snapshot = stack.snapshot(GANSU)
    kept = snapshot.quota_notices if kind == "QuotaNotice" else snapshot.consumption_notices
    assert [(n.times_received, n.amount_fen) for n in kept] == [(2, 100 if kind == "QuotaNotice" else 40)]
