"""The stub province asks the gateway for the gateway's keys (ListGatewayKeys): with no gateway key file in
its keys folder it verifies deliveries, notifications and receipts, follows a rotation of the gateway's key,
and a flood of unknown key ids does not make it hammer the gateway."""

from __future__ import annotations

import hashlib
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_gateway
from gateway.config import Settings
from gateway.outbox_loop import OutboxSettings
from gateway.security.keys import load_private_key
from gateway.security.signing import EnvelopeSigner
from gateway.usecases.outbox_ports import Backoff
from gateway.wire import envelope_to_proto
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import common_pb2, province_pb2, province_pb2_grpc, transfers_pb2
from tests.support import GANSU, GIVER, MOTHER, XINJIANG, LoopThread, Stack, start_stack, ts, unique_id, wait_until

LIST_GATEWAY_KEYS = "/gongji.v1.GatewayKeys/ListGatewayKeys"
DELIVERY_TYPE = "gongji.v1.TransferDelivery"


def list_calls(stack: Stack) -> int:
    """How many ListGatewayKeys calls the gateway has handled, whatever their outcome (its /metrics)."""
    url = f"http://127.0.0.1:{stack.gateway.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        body = answer.read().decode()
    return int(sum(sample.value for family in text_string_to_metric_families(body) if family.name == "gongji_rpc"
                   for sample in family.samples
                   if sample.name == "gongji_rpc_total" and sample.labels.get("method") == LIST_GATEWAY_KEYS))


def gateway_key_files(*folders: Path) -> list[Path]:
    return sorted(path for folder in folders for path in folder.glob("gateway*.pub"))


@pytest.fixture
def stub_keys(tmp_path: Path) -> Path:
    return tmp_path / "stub-keys"


@pytest.fixture
def keyless_stack(loop_thread: LoopThread, tmp_path: Path, db_url: str, stub_keys: Path) -> Iterator[Stack]:
    """The stack, its stubs keeping their keys in their own folder: no gateway key file there, ever."""
    stack = start_stack(loop_thread, tmp_path, db_url, stub_keys_dir=stub_keys, metrics_listen="127.0.0.1:0")
    yield stack
    stack.close()


def submit_from_xinjiang(stack: Stack, amount_fen: int) -> control_pb2.StubSubmitResponse:
    """Xinjiang's stub signs and submits, and checks the gateway's receipt with the key the gateway lists."""
    return stack.control(XINJIANG).SubmitTransfer(control_pb2.StubSubmitRequest(
        giver_id_number=GIVER[0], receiver_id_number=MOTHER[0], receiver_pooling_area=MOTHER[1],
        receiver_province=GANSU, amount_fen=amount_fen, binding_id=stack.binding_id), timeout=10)


def credited_and_told(stack: Stack, transfer_id: str) -> None:
    """Gansu's stub accepted the delivery and took the outcome; Xinjiang's took the outcome too."""
    stack.wait_for_state(transfer_id, transfers_pb2.TRANSFER_STATE_COMMITTED)
    wait_until(lambda: [c.status for c in stack.snapshot(GANSU).credits if c.transfer_id == transfer_id]
               == ["CREDITED"], what="Gansu's stub to credit on the COMMITTED outcome")
    wait_until(lambda: any(n.transfer_id == transfer_id and n.state == transfers_pb2.TRANSFER_STATE_COMMITTED
                           for n in stack.snapshot(XINJIANG).notifications), what="Xinjiang's stub to be told")


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "mtls"])
def test_the_stub_verifies_what_the_gateway_signs_with_the_keys_it_lists(
        loop_thread: LoopThread, tmp_path: Path, db_url: str, stub_keys: Path, tls: bool) -> None:
    stack = start_stack(loop_thread, tmp_path, db_url, stub_keys_dir=stub_keys, metrics_listen="127.0.0.1:0",
                        tls_dir=tmp_path / "tls" if tls else None)
    try:
        # Gansu's stub already verified the consent request for the stack's binding, with no key file of the
        # gateway's in its folder; none is left in the gateway's own folder either.
        assert gateway_key_files(stub_keys) == []
        for path in gateway_key_files(stack.keys_dir):
            path.unlink()

        submitted = submit_from_xinjiang(stack, 2_000)
        assert (submitted.code, submitted.receipt_verified) == ("OK", True)
        credited_and_told(stack, submitted.transfer_id)
        assert stack.snapshot(GANSU).deliveries_received >= 1

        # Each stub asked once, at its first need, and verified everything after from what it was told.
        assert list_calls(stack) == 2
        assert gateway_key_files(stub_keys, stack.keys_dir) == []
    finally:
        stack.close()


def restart_gateway_with_a_new_key(stack: Stack, db_url: str) -> None:
    """The gateway comes back on the same ports and database signing with gateway-k2 (gateway-k1 overlaps)."""
    port, ops_port = stack.gateway.port, stack.gateway.ops_port
    stack.loop_thread.run(stack.gateway.stop(1.0))
    settings = Settings(listen=f"127.0.0.1:{port}", ops_listen=f"127.0.0.1:{ops_port}",
                        metrics_listen="127.0.0.1:0", database_url=db_url,
                        gateway_key_file=stack.keys_dir / "gateway-k2.key", gateway_key_id="gateway-k2",
                        gateway_key_overlap_seconds=3600, id_hash_key_file=stack.keys_dir / "id-hash.key",
                        data_key_file=stack.keys_dir / "data.keys", province_call_timeout_seconds=2.0,
                        insecure_dev_plaintext=True, db_threads=0 if db_url.startswith("sqlite") else 4,
                        outbox=OutboxSettings(poll_interval_seconds=0.05, sweep_interval_seconds=0.05,
                                              backoff=Backoff(base_seconds=0.05, max_seconds=0.5)))
    stack.gateway = stack.loop_thread.run(create_gateway(settings, stack.clock))


def delivery_signed_by(stack: Stack, signer: EnvelopeSigner) -> province_pb2.DeliverTransferRequest:
    """A delivery to Gansu of a fresh instruction from Xinjiang, its delivery envelope signed by `signer`."""
    instruction = stack.sign(stack.instruction(transfer_id=unique_id("tr")))
    transfer_id = transfers_pb2.TransferInstruction.FromString(instruction.payload).header.message_id
    delivery = province_pb2.TransferDelivery(
        header=common_pb2.Header(message_id=f"dlv:{transfer_id}", sender="gateway", receiver=GANSU,
                                 created_at=ts(stack.clock.now())),
        transfer_id=transfer_id, instruction_sha256=hashlib.sha256(instruction.payload).digest())
    return province_pb2.DeliverTransferRequest(
        instruction=instruction,
        delivery=envelope_to_proto(signer.sign(DELIVERY_TYPE, delivery.SerializeToString())))


def test_the_stub_follows_a_rotation_of_the_gateway_key_with_no_key_file(keyless_stack: Stack, db_url: str,
                                                                        stub_keys: Path) -> None:
    stack = keyless_stack
    first = submit_from_xinjiang(stack, 1_000)
    assert (first.code, first.receipt_verified) == ("OK", True)
    credited_and_told(stack, first.transfer_id)
    old_key = load_private_key(stack.keys_dir / "gateway.key")

    restart_gateway_with_a_new_key(stack, db_url)
    for path in gateway_key_files(stack.keys_dir):
        path.unlink()  # the new gateway-k2.pub and the old gateway.pub: nothing on disk to read
    assert gateway_key_files(stub_keys, stack.keys_dir) == []

    # Deliveries, outcomes and receipts now signed with gateway-k2 are accepted by both stubs.
    submitted = submit_from_xinjiang(stack, 3_000)
    assert (submitted.code, submitted.receipt_verified) == ("OK", True)
    credited_and_told(stack, submitted.transfer_id)
    answer = stack.submit(stack.instruction(amount_fen=4_000))
    assert answer.receipt.key_id == "gateway-k2"
    credited_and_told(stack, answer.transfer_id)

    # Within the overlap, what the gateway signed with gateway-k1 still verifies at the stub.
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)  # a delivery the gateway never made
    inbox = province_pb2_grpc.ProvinceInboxStub(grpc.insecure_channel(stack.stubs[GANSU].address))
    old = delivery_signed_by(stack, EnvelopeSigner("gateway", "gateway-k1", old_key))
    assert inbox.DeliverTransfer(old, timeout=5).decision == province_pb2.DELIVERY_DECISION_ACCEPTED
    forged = delivery_signed_by(stack, EnvelopeSigner("gateway", "gateway-k2", Ed25519PrivateKey.generate()))
    answered = inbox.DeliverTransfer(forged, timeout=5)
    assert (answered.decision, answered.reject_reason) == (province_pb2.DELIVERY_DECISION_REJECTED,
                                                           "BAD_GATEWAY_SIGNATURE")


def test_unknown_key_ids_make_the_stub_ask_the_gateway_at_most_once_a_second(keyless_stack: Stack) -> None:
    stack = keyless_stack
    inbox = province_pb2_grpc.ProvinceInboxStub(grpc.insecure_channel(stack.stubs[GANSU].address))

    def bogus(n: int) -> grpc.StatusCode:
        signer = EnvelopeSigner("gateway", f"gateway-bogus-{n}", Ed25519PrivateKey.generate())
        try:
            inbox.DeliverTransfer(delivery_signed_by(stack, signer), timeout=5)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined, no-any-return]
        raise AssertionError("a delivery signed with an unknown key was answered")

    before = list_calls(stack)
    started = time.monotonic()
    # Not our answer to give: the gateway is asked to resend (as while its key is unknown), not refused.
    assert {bogus(n) for n in range(40)} == {grpc.StatusCode.UNAVAILABLE}
    elapsed = time.monotonic() - started
    asked = list_calls(stack) - before
    assert asked <= int(elapsed) + 1, f"{asked} ListGatewayKeys calls in {elapsed:.2f}s"

    # It does ask again once the interval has passed: keep sending until it has, then it is one more call.
    counted = list_calls(stack)
    wait_until(lambda: bogus(0) and list_calls(stack) > counted, timeout=5, interval=0.05,
               what="the stub to ask for the gateway's keys again")
    assert list_calls(stack) == counted + 1

    # The real key still works throughout.
    submitted = submit_from_xinjiang(stack, 1_500)
    assert (submitted.code, submitted.receipt_verified) == ("OK", True)
    credited_and_told(stack, submitted.transfer_id)
