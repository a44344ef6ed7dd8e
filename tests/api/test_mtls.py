"""Mutual TLS (issue 5, D20): real certificates from a development CA, on both ports and on the
gateway's calls to the provinces; the caller's certificate decides who it may act as."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from sqlalchemy import text

from gateway.security.tls import GATEWAY_DNS
from protos.gongji.v1 import operations_pb2, operations_pb2_grpc, transfers_pb2, transfers_pb2_grpc
from scripts.devtls import DevCa
from tests.support import GANSU, XINJIANG, LoopThread, Stack, error_of, secure_channel, start_stack

S = transfers_pb2


@pytest.fixture
def tls_stack(loop_thread: LoopThread, tmp_path: Path, sqlite_url: str) -> Iterator[Stack]:
    # The binding made at start already went both ways over mutual TLS: proposal from Xinjiang's
    # certificate, consent request to Gansu's stub, Gansu's acceptance from its own certificate.
    stack = start_stack(loop_thread, tmp_path, sqlite_url, tls_dir=tmp_path / "tls")
    yield stack
    stack.close()


def transfers_as(stack: Stack, identity: str) -> transfers_pb2_grpc.TransfersStub:
    return transfers_pb2_grpc.TransfersStub(stack.channel_as(identity))


def test_a_whole_transfer_runs_over_mutual_tls(tls_stack: Stack) -> None:
    stack = tls_stack
    answer = stack.submit(stack.instruction(amount_fen=12_300))  # Xinjiang's certificate, Xinjiang's key
    view = stack.wait_for_state(answer.transfer_id, S.TRANSFER_STATE_COMMITTED)
    assert view.amount_fen == 12_300
    stack.wait_for_outbox_idle(XINJIANG)
    stack.wait_for_outbox_idle(GANSU)
    # Both provinces were told over mutual TLS (the gateway's client certificate, their server ones).
    for code in (XINJIANG, GANSU):
        assert any(n.transfer_id == answer.transfer_id for n in stack.snapshot(code).notifications)


def test_a_plaintext_call_fails(tls_stack: Stack) -> None:
    plain = transfers_pb2_grpc.TransfersStub(grpc.insecure_channel(f"127.0.0.1:{tls_stack.gateway.port}"))
    seen = error_of(lambda: plain.GetTransfer(S.GetTransferRequest(), timeout=3))
    assert seen.code == grpc.StatusCode.UNAVAILABLE
    ops = operations_pb2_grpc.OperationsStub(grpc.insecure_channel(f"127.0.0.1:{tls_stack.gateway.ops_port}"))
    assert error_of(lambda: ops.ListProvinces(operations_pb2.ListProvincesRequest(), timeout=3)).code == \
        grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_is_refused(tls_stack: Stack, tmp_path: Path) -> None:
    stranger = DevCa(tmp_path / "stranger")
    stranger.issue("province-650000", "gongji:province:650000")
    channel = secure_channel(f"127.0.0.1:{tls_stack.gateway.port}", stranger, "province-650000", GATEWAY_DNS)
    seen = error_of(lambda: transfers_pb2_grpc.TransfersStub(channel).GetTransfer(S.GetTransferRequest(), timeout=3))
    assert seen.code == grpc.StatusCode.UNAVAILABLE


def test_gansus_certificate_cannot_submit_what_xinjiang_signed(tls_stack: Stack) -> None:
    stack = tls_stack
    envelope = stack.sign(stack.instruction())  # signed with Xinjiang's key, as Xinjiang
    before = stack.counts()
    seen = error_of(lambda: transfers_as(stack, f"province-{GANSU}").SubmitTransfer(
        S.SubmitTransferRequest(instruction=envelope), timeout=5))
    assert (seen.code, seen.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SIGNER_NOT_CALLER")
    assert stack.counts() == before
    # The same bytes from Xinjiang's own certificate go through.
    assert transfers_as(stack, f"province-{XINJIANG}").SubmitTransfer(
        S.SubmitTransferRequest(instruction=envelope), timeout=5).state == S.TRANSFER_STATE_RECEIVED


def test_operators_and_provinces_stay_on_their_own_ports(tls_stack: Stack) -> None:
    stack = tls_stack
    as_province = operations_pb2_grpc.OperationsStub(secure_channel(
        f"127.0.0.1:{stack.gateway.ops_port}", stack.tls, f"province-{XINJIANG}", GATEWAY_DNS))  # type: ignore[arg-type]
    seen = error_of(lambda: as_province.ListProvinces(operations_pb2.ListProvincesRequest(), timeout=5))
    assert (seen.code, seen.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_AN_OPERATOR")
    assert len(stack.operations.ListProvinces(operations_pb2.ListProvincesRequest(), timeout=5).provinces) == 2
    seen = error_of(lambda: transfers_as(stack, "operator-operator").SubmitTransfer(
        S.SubmitTransferRequest(instruction=stack.sign(stack.instruction())), timeout=5))
    assert (seen.code, seen.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_A_PROVINCE")


def _served_certificate_serial(stack: Stack) -> int:
    assert stack.tls is not None
    context = ssl.create_default_context(cafile=str(stack.tls.cert_file))
    files = stack.tls.files(f"province-{XINJIANG}")
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", stack.gateway.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=GATEWAY_DNS) as tls:
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509
    return x509.load_der_x509_certificate(der).serial_number  # type: ignore[arg-type]


def test_the_gateway_certificate_is_replaced_without_a_restart(tls_stack: Stack) -> None:
    stack = tls_stack
    assert stack.tls is not None
    first = _served_certificate_serial(stack)
    stack.tls.issue("gateway", "gongji:gateway", [GATEWAY_DNS])  # new key and certificate, same files
    assert _served_certificate_serial(stack) != first
    # Calls keep working on fresh connections with the new certificate.
    fresh = transfers_as(stack, f"province-{XINJIANG}")
    assert fresh.SubmitTransfer(S.SubmitTransferRequest(instruction=stack.sign(stack.instruction())),
                                timeout=5).state == S.TRANSFER_STATE_RECEIVED


@pytest.mark.parametrize("name", [
    pytest.param(lambda value: x509.DNSName(value), id="a DNS name"),
    pytest.param(lambda value: x509.RFC822Name(value), id="an e-mail name"),
])
def test_an_identity_is_read_from_uri_names_only(tls_stack: Stack, name: Callable[[str], x509.GeneralName]) -> None:
    """`gongji:operator:mallory` spelled as another kind of subjectAltName names no one."""
    stack = tls_stack
    assert stack.tls is not None
    stack.tls.issue_names("operator-mallory", [name("gongji:operator:mallory")])
    as_mallory = operations_pb2_grpc.OperationsStub(secure_channel(
        f"127.0.0.1:{stack.gateway.ops_port}", stack.tls, "operator-mallory", GATEWAY_DNS))
    seen = error_of(lambda: as_mallory.ListProvinces(operations_pb2.ListProvincesRequest(), timeout=5))
    assert (seen.code, seen.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NO_IDENTITY")
    stack.tls.issue_names("province-fake", [name(f"gongji:province:{XINJIANG}")])
    as_fake = transfers_pb2_grpc.TransfersStub(secure_channel(
        f"127.0.0.1:{stack.gateway.port}", stack.tls, "province-fake", GATEWAY_DNS))
    seen = error_of(lambda: as_fake.SubmitTransfer(S.SubmitTransferRequest(
        instruction=stack.sign(stack.instruction())), timeout=5))
    assert (seen.code, seen.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NO_IDENTITY")


def test_every_operator_action_in_the_audit_chain_names_the_operator(tls_stack: Stack) -> None:
    stack = tls_stack
    ops = operations_pb2_grpc.OperationsStub(secure_channel(
        f"127.0.0.1:{stack.gateway.ops_port}", stack.tls, "operator-operator", GATEWAY_DNS))  # type: ignore[arg-type]
    stack.wait_for_state(stack.submit(stack.instruction(amount_fen=2_000)).transfer_id,
                         S.TRANSFER_STATE_COMMITTED)
    ops.UpdateProvince(operations_pb2.UpdateProvinceRequest(code=GANSU, name="甘肃省"), timeout=5)
    window = ops.CloseSettlementWindow(operations_pb2.CloseSettlementWindowRequest(), timeout=10).window
    with stack.gateway.engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, subject_id, action, detail FROM audit_log ORDER BY seq")).all()
    by_operator = [(kind, subject, action) for kind, subject, action, detail in rows
                   if detail.endswith(" by=operator:operator")]
    assert ("province", GANSU, "UPDATED") in by_operator
    assert ("settlement", window.window_id, "CLOSED") in by_operator
    renamed = [detail for kind, subject, action, detail in rows if (kind, subject, action) == (
        "province", GANSU, "UPDATED")]
    assert renamed and 'name="甘肃省"' in renamed[-1]
    # The provinces' own signed actions name their signer in the envelope; only operators' are marked so.
    assert not [r for r in rows if r[0] == "transfer" and "by=" in r[3]]
