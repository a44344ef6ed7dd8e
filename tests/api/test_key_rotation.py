"""Keys (issue 5): a province rotates its signing key with no failed call; retired, expired and
not-yet-valid keys are refused; a message replayed after its window is refused even if never seen."""

from __future__ import annotations

import threading
from datetime import UTC, timedelta

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.app import create_gateway
from gateway.config import Settings
from gateway.outbox_loop import OutboxSettings
from gateway.security.keys import load_public_key, public_bytes
from gateway.security.signing import EnvelopeSigner, verify_signature
from gateway.usecases.audit import checkpoint_audit, verify_audit
from gateway.usecases.keys import gateway_keys, register_gateway_key
from gateway.usecases.outbox_ports import Backoff
from protos.gongji.v1 import keys_pb2, keys_pb2_grpc, operations_pb2, transfers_pb2
from tests.support import XINJIANG, Stack, error_of, ts, wait_until


def add_key(stack: Stack, key_id: str, key: Ed25519PrivateKey, **validity: object) -> None:
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(code=XINJIANG, add_keys=[
        operations_pb2.ProvinceKey(key_id=key_id, alg="ed25519", public_key=public_bytes(key), **validity)]),
        timeout=5)


def test_rotating_a_province_key_under_load_fails_no_call(stack: Stack) -> None:
    old_signer = stack.signers[XINJIANG]
    new_key = Ed25519PrivateKey.generate()
    outcomes: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                stack.submit(stack.instruction(amount_fen=100))
                outcomes.append("OK")
            except grpc.RpcError as error:
                outcomes.append(error.code().name)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_until(lambda: len(outcomes) >= 5, what="load with the old key")
        add_key(stack, "650000-k2", new_key)  # 1. publish the new key: both are valid now
        wait_until(lambda: len(outcomes) >= 10, what="load with both keys published")
        stack.signers[XINJIANG] = EnvelopeSigner(XINJIANG, "650000-k2", new_key)  # 2. sign with the new one
        wait_until(lambda: len(outcomes) >= 15, what="load with the new key")
        stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(  # 3. retire the old one
            code=XINJIANG, retire_key_ids=["650000-k1"]), timeout=5)
        wait_until(lambda: len(outcomes) >= 20, what="load after the old key was retired")
    finally:
        stop.set()
        worker.join(30)
    assert set(outcomes) == {"OK"}, f"calls failed during the rotation: {outcomes}"
    # The retired key is refused from now on.
    stack.signers[XINJIANG] = old_signer
    seen = error_of(lambda: stack.submit(stack.instruction()))
    assert (seen.code, seen.reason) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_NOT_ACTIVE")


def test_expired_and_not_yet_valid_keys_are_refused(stack: Stack) -> None:
    now = stack.clock.now()
    expired, future = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    add_key(stack, "650000-old", expired, valid_from=ts(now - timedelta(days=30)),
            valid_until=ts(now - timedelta(days=1)))
    add_key(stack, "650000-next", future, valid_from=ts(now + timedelta(days=1)))
    for key_id, key in (("650000-old", expired), ("650000-next", future)):
        stack.signers[XINJIANG] = EnvelopeSigner(XINJIANG, key_id, key)
        seen = error_of(lambda: stack.submit(stack.instruction()))
        assert (seen.code, seen.reason) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_NOT_ACTIVE"), key_id
    # Once its time comes, the next key works.
    stack.clock.advance(timedelta(days=1, minutes=1).total_seconds())
    stack.signers[XINJIANG] = EnvelopeSigner(XINJIANG, "650000-next", future)
    answer = stack.submit(stack.instruction())
    assert answer.state == transfers_pb2.TRANSFER_STATE_RECEIVED


def test_a_message_replayed_after_its_window_is_refused_even_if_never_seen(stack: Stack) -> None:
    signed_long_ago = stack.instruction(created_at=stack.clock.now() - timedelta(minutes=10))
    seen = error_of(lambda: stack.submit(signed_long_ago))
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "STALE_MESSAGE")
    # One accepted in its window and resent after it executes nothing: it gets its stored answer (D15),
    # while the same instruction under a new id, never seen, is refused.
    fresh = stack.instruction()
    envelope = stack.sign(fresh)
    first = stack.submit(envelope)
    assert first.state == transfers_pb2.TRANSFER_STATE_RECEIVED
    stack.clock.advance(600)
    again = stack.submit(envelope)
    assert (again.replay, again.receipt) == (True, first.receipt)
    fresh.header.message_id += "-new"
    seen = error_of(lambda: stack.submit(fresh))
    assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "STALE_MESSAGE")


def _gateway_keys(stack: Stack) -> list[keys_pb2.GatewayKey]:
    return list(keys_pb2_grpc.GatewayKeysStub(stack.channel).ListGatewayKeys(keys_pb2.ListGatewayKeysRequest(),
                                                                               timeout=5).keys)


def test_the_gateway_key_rotates_and_provinces_can_fetch_it(stack: Stack, db_url: str) -> None:
    (only,) = _gateway_keys(stack)
    assert (only.key_id, only.current, only.public_key) == ("gateway-k1", True, stack.gateway_public_key())
    stack.wait_for_state(stack.submit(stack.instruction()).transfer_id, transfers_pb2.TRANSFER_STATE_COMMITTED)
    assert checkpoint_audit(stack.gateway.context) is not None  # signed by gateway-k1

    # Restart with a new key on the same ports and database: the stubs keep calling the same address.
    port, ops_port = stack.gateway.port, stack.gateway.ops_port
    stack.loop_thread.run(stack.gateway.stop(1.0))
    settings = Settings(listen=f"127.0.0.1:{port}", ops_listen=f"127.0.0.1:{ops_port}", metrics_listen="",
                        database_url=db_url, gateway_key_file=stack.keys_dir / "gateway-k2.key",
                        gateway_key_id="gateway-k2", id_hash_key_file=stack.keys_dir / "id-hash.key",
                        data_key_file=stack.keys_dir / "data.keys", province_call_timeout_seconds=2.0,
                        insecure_dev_plaintext=True,
                        db_threads=0 if db_url.startswith("sqlite") else 4,
                        outbox=OutboxSettings(poll_interval_seconds=0.05, sweep_interval_seconds=0.05,
                                              backoff=Backoff(base_seconds=0.05, max_seconds=0.5)))
    stack.gateway = stack.loop_thread.run(create_gateway(settings, stack.clock))

    keys = {k.key_id: k for k in _gateway_keys(stack)}
    assert keys["gateway-k2"].current and not keys["gateway-k1"].current
    ends = keys["gateway-k1"].valid_until.ToDatetime(tzinfo=UTC)
    assert timedelta(days=6) < ends - stack.clock.now() <= timedelta(days=7)  # the overlap
    new_public = load_public_key(stack.keys_dir / "gateway-k2.pub")
    assert keys["gateway-k2"].public_key == new_public != stack.gateway_public_key()

    # Everything goes on: receipts now name the new key, and the provinces verify what it signs.
    answer = stack.submit(stack.instruction())
    assert answer.receipt.key_id == "gateway-k2"
    stack.wait_for_state(answer.transfer_id, transfers_pb2.TRANSFER_STATE_COMMITTED)
    assert checkpoint_audit(stack.gateway.context) is not None  # signed by gateway-k2
    # The whole record verifies with the keys the gateway publishes, old checkpoints included.
    published = {k.key_id: k.public_key for k in gateway_keys(stack.gateway.context, include_expired=True)}
    report = verify_audit(stack.gateway.context.uow, published, verify_signature)
    assert report.ok and report.checkpoints == 2, report.findings
    # Starting again with the same key changes nothing.
    register_gateway_key(stack.gateway.context, "gateway-k2", new_public, timedelta(days=7))
    assert {k.key_id: k.current for k in _gateway_keys(stack)} == {"gateway-k2": True, "gateway-k1": False}
