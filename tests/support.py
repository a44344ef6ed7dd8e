"""Test support: a loop thread for async servers, a running stack, message builders and waiting."""

from __future__ import annotations

import asyncio
import atexit
import functools
import hashlib
import os
import shutil
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import func, select, text

from gateway.app import Gateway, create_gateway
from gateway.config import Settings
from gateway.domain.clock import OffsetClock
from gateway.domain.envelope import Envelope
from gateway.outbox_loop import OutboxSettings
from gateway.security.keys import load_private_key, load_public_key
from gateway.security.signing import EnvelopeSigner, verify_signature
from gateway.security.tls import GATEWAY_DNS, province_dns
from gateway.store.engine import make_engine
from gateway.store.schema import upgrade
from gateway.usecases.outbox_ports import Backoff
from gateway.wire import envelope_to_proto
from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import (
    common_pb2,
    keys_pb2,
    keys_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    relations_pb2,
    relations_pb2_grpc,
    transfers_pb2,
    transfers_pb2_grpc,
)
from province_stub.server import RunningStub, StubConfig, start_stub
from province_stub.state import Behaviour, ConfirmMode
from scripts.devtls import DevCa, channel_as, ensure_dev_pki
from scripts.idgen import opaque_ref
from scripts.scratch_postgres import admin_url as postgres_admin_url
from scripts.scratch_postgres import scratch_database

T = TypeVar("T")

XINJIANG, GANSU = "650000", "620000"
GIVER = ("650502199001011230", "650500")  # Hami, employee insurance (the seeds' giver)
MOTHER = ("620102196505120026", "620100")  # Lanzhou, resident insurance (his mother)


class LoopThread:
    """An asyncio loop in a background thread, so sync tests can run async servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def thread_id(self) -> int:
        """The loop's thread (its CPU clock: time.pthread_getcpuclockid)."""
        assert self._thread.ident is not None
        return self._thread.ident

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


# The two databases a test runs on, as pytest parameters: PostgreSQL's marked (skipped when unreachable, but not
# when CI=true).
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
POSTGRES_SKIPPED = "PostgreSQL tests skipped"


def required_postgres_admin_url(skipped: str) -> str:
    """The PostgreSQL at 127.0.0.1:5432 as its administrator; unreachable, the test fails when CI=true, else is
    skipped saying `skipped`."""
    admin = postgres_admin_url()
    if admin is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is unreachable, and CI=true requires it")
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable; {skipped} (CI=true requires them)")
    return admin


def fresh_postgres_database(prefix: str, skipped: str, template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database on 127.0.0.1:5432, empty or a copy of `template`, dropped afterwards; required when
    CI=true."""
    with scratch_database(required_postgres_admin_url(skipped), prefix, template) as url:
        yield url


def empty_database(kind: str, folder: Path) -> Iterator[str]:
    """A fresh, empty database of `kind` (DATABASES): a SQLite file in `folder`, or a new PostgreSQL database."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'gongji.db'}"
    else:
        yield from fresh_postgres_database("gongji_test", POSTGRES_SKIPPED)


def migrated_database(kind: str, folder: Path) -> Iterator[str]:
    """A fresh database of `kind` at the schema's head, as `gongji db upgrade` leaves it: a copy of one the
    migrations made once a process, not migrated anew."""
    if kind == "sqlite":
        shutil.copyfile(_migrated_sqlite(), folder / "gongji.db")
        yield f"sqlite:///{folder / 'gongji.db'}"
    else:
        yield from fresh_postgres_database("gongji_test", POSTGRES_SKIPPED, template=_migrated_postgres())


@functools.cache
def _migrated_sqlite() -> Path:
    """A SQLite file at the schema's head, made once a process, removed when it ends."""
    path = Path(tempfile.mkdtemp(prefix="gongji-schema-")) / "gongji.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # the last connection's close checkpoints the log into the file
    atexit.register(shutil.rmtree, path.parent, True)
    return path


@functools.cache
def _migrated_postgres() -> str:
    """The name of a PostgreSQL database at the schema's head, made once a process (nothing stays connected to it:
    a template must have no connection), dropped when it ends. Skips or fails as every PostgreSQL test does when
    the server is unreachable (nothing is cached then)."""
    made = fresh_postgres_database("gongji_schema", POSTGRES_SKIPPED)
    url = next(made)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    atexit.register(lambda: next(made, None))
    return url.rsplit("/", 1)[1]


def wait_until(condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.02, what: str = "") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds (no bare sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def ts(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def unique_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def unique_ref(prefix: str = "ref") -> str:
    """A unique opaque reference without digits: one with digits may, by chance, look like an ID number (D19)."""
    return opaque_ref(prefix, 20)


# Every seeded person's ID number and name: none may appear in clear in a log line or error (D19).
SEEDS = Path(__file__).resolve().parents[1] / "province_stub" / "seeds"
CLEAR_PERSONAL_DATA = tuple(
    value
    for seed in sorted(SEEDS.glob("*.toml"))
    for person in tomllib.loads(seed.read_text(encoding="utf-8"))["people"]
    for value in (person["id_number"], person["name"])
)


@dataclass
class ErrorSeen:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    message: str


def error_seen(error: grpc.RpcError) -> ErrorSeen:
    """A failed call's status code and ErrorInfo (its message checked for clear personal data)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason, metadata = "", {}
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                assert info.domain == "gongji.v1"
                reason, metadata = info.reason, dict(info.metadata)
    message = error.details() or ""  # type: ignore[attr-defined]
    for clear in CLEAR_PERSONAL_DATA:
        assert clear not in message, "an error message shows personal data in clear (D19)"
    return ErrorSeen(error.code(), reason, metadata, message)  # type: ignore[attr-defined]


def error_of(call: Callable[[], Any]) -> ErrorSeen:
    """Run a call that must fail; return its status code and ErrorInfo."""
    try:
        call()
    except grpc.RpcError as error:
        return error_seen(error)
    raise AssertionError("the call succeeded but was expected to fail")


@dataclass
class Stack:
    loop_thread: LoopThread
    gateway: Gateway
    clock: OffsetClock
    stubs: dict[str, RunningStub]
    keys_dir: Path
    channel: grpc.Channel
    ops_channel: grpc.Channel
    signers: dict[str, EnvelopeSigner] = field(default_factory=dict)
    binding_id: str = ""  # the ACTIVE binding of GIVER and MOTHER made at start
    tls: DevCa | None = None  # set when the stack runs with mutual TLS
    # The stubs' own keys folder, when not the gateway's (start_stack(..., stub_keys_dir=...)).
    stub_keys: Path | None = None

    @property
    def stub_keys_dir(self) -> Path:
        return self.stub_keys or self.keys_dir

    @property
    def transfers(self) -> transfers_pb2_grpc.TransfersStub:
        return transfers_pb2_grpc.TransfersStub(self.channel)

    @property
    def operations(self) -> operations_pb2_grpc.OperationsStub:
        return operations_pb2_grpc.OperationsStub(self.ops_channel)

    def control(self, province: str) -> control_pb2_grpc.StubControlStub:
        """The stub's control service, on its own loopback port (with TLS, as an operator)."""
        address = self.stubs[province].control_address
        if self.tls is None:
            return control_pb2_grpc.StubControlStub(grpc.insecure_channel(address))
        return control_pb2_grpc.StubControlStub(secure_channel(address, self.tls, "operator-operator",
                                                               province_dns(province)))

    def channel_as(self, identity: str) -> grpc.Channel:
        """A channel to the provinces' port presenting `identity`'s certificate (e.g. "province-620000")."""
        assert self.tls is not None, "a stack with mutual TLS (start_stack(..., tls_dir=...))"
        return secure_channel(f"127.0.0.1:{self.gateway.port}", self.tls, identity, GATEWAY_DNS)

    def configure(self, province: str, **behaviour: Any) -> None:
        self.control(province).Configure(control_pb2.Behaviour(**behaviour), timeout=5)

    def snapshot(self, province: str) -> control_pb2.SnapshotResponse:
        return self.control(province).Snapshot(control_pb2.SnapshotRequest(), timeout=5)

    def gateway_public_key(self) -> bytes:
        return load_public_key(self.keys_dir / "gateway.pub")

    # -- messages, signed as a province platform would -------------------------------------------
    def instruction(self, transfer_id: str | None = None, amount_fen: int = 50_000, sender: str = XINJIANG,
                    receiver: str = GANSU, giver: tuple[str, str] = GIVER, person: tuple[str, str] = MOTHER,
                    created_at: datetime | None = None, **overrides: Any) -> transfers_pb2.TransferInstruction:
        message = transfers_pb2.TransferInstruction(
            header=common_pb2.Header(message_id=transfer_id or unique_id("tr"), sender=sender, receiver=receiver,
                                     created_at=ts(created_at or self.clock.now())),
            giver=common_pb2.PersonRef(id_number=giver[0], pooling_area=giver[1]),
            receiver=common_pb2.PersonRef(id_number=person[0], pooling_area=person[1]),
            amount_fen=amount_fen, currency="CNY", binding_id=self.binding_id)
        for name, value in overrides.items():
            setattr(message, name, value)
        return message

    def sign(self, message: Any, signer: str = XINJIANG, payload_type: str | None = None,
             payload: bytes | None = None) -> common_pb2.SignedEnvelope:
        envelope = self.signers[signer].sign(payload_type or message.DESCRIPTOR.full_name,
                                             payload if payload is not None else message.SerializeToString())
        return envelope_to_proto(envelope)

    def submit(self, instruction: transfers_pb2.TransferInstruction | common_pb2.SignedEnvelope,
               signer: str = XINJIANG) -> transfers_pb2.SubmitTransferResponse:
        envelope = instruction if isinstance(instruction, common_pb2.SignedEnvelope) else self.sign(instruction, signer)
        return self.transfers.SubmitTransfer(transfers_pb2.SubmitTransferRequest(instruction=envelope), timeout=10)

    def confirm(self, transfer_id: str, signer: str = GANSU, decline: bool = False,
                message_id: str | None = None) -> transfers_pb2.ConfirmTransferResponse:
        confirmation = transfers_pb2.TransferConfirmation(
            header=common_pb2.Header(message_id=message_id or unique_id("cf"), sender=signer, receiver="gateway",
                                     created_at=ts(self.clock.now())),
            transfer_id=transfer_id,
            decision=(transfers_pb2.CONFIRMATION_DECISION_DECLINED if decline
                      else transfers_pb2.CONFIRMATION_DECISION_CREDITED),
            decline_reason="RECEIVER_DECLINED" if decline else "")
        return self.transfers.ConfirmTransfer(
            transfers_pb2.ConfirmTransferRequest(confirmation=self.sign(confirmation, signer)), timeout=10)

    def verify_relation(self, receiver: tuple[str, str] = MOTHER, relation_code: str = "52",
                        giver: tuple[str, str] = GIVER, sender: str = XINJIANG,
                        receiver_province: str = GANSU) -> relations_pb2.VerifyRelationResponse:
        query = relations_pb2.RelationQuery(
            header=common_pb2.Header(message_id=unique_id("vr"), sender=sender, receiver=receiver_province,
                                     created_at=ts(self.clock.now())),
            giver=common_pb2.PersonRef(id_number=giver[0], pooling_area=giver[1]),
            receiver=common_pb2.PersonRef(id_number=receiver[0], pooling_area=receiver[1]),
            relation_code=relation_code)
        return relations_pb2_grpc.RelationsStub(self.channel).VerifyRelation(
            relations_pb2.VerifyRelationRequest(query=self.sign(query, sender)), timeout=10)

    # -- bindings, signed as the provinces' platforms would ---------------------------------------
    def propose(self, receiver: tuple[str, str] = MOTHER, relation_code: str = "52", binding_id: str | None = None,
                giver: tuple[str, str] = GIVER, sender: str = XINJIANG, receiver_province: str = GANSU,
                authorised_amount_fen: int = 0, consent_seconds: int = 3600,
                envelope: common_pb2.SignedEnvelope | None = None,
                letter_version: str = "2024-01") -> relations_pb2.ProposeBindingResponse:
        """Propose a binding (signed as `sender`), or send `envelope`, a proposal signed before."""
        if envelope is None:
            envelope = self.signed_proposal(receiver, relation_code, binding_id, giver, sender, receiver_province,
                                            authorised_amount_fen, consent_seconds, letter_version)
        return self.relations.ProposeBinding(relations_pb2.ProposeBindingRequest(proposal=envelope), timeout=10)

    def signed_proposal(self, receiver: tuple[str, str] = MOTHER, relation_code: str = "52",
                        binding_id: str | None = None, giver: tuple[str, str] = GIVER, sender: str = XINJIANG,
                        receiver_province: str = GANSU, authorised_amount_fen: int = 0,
                        consent_seconds: int = 3600, letter_version: str = "2024-01") -> common_pb2.SignedEnvelope:
        now = self.clock.now()
        proposal = relations_pb2.BindingProposal(
            header=common_pb2.Header(message_id=binding_id or unique_id("b"), sender=sender,
                                     receiver=receiver_province, created_at=ts(now)),
            giver=common_pb2.PersonRef(id_number=giver[0], pooling_area=giver[1]),
            receiver=common_pb2.PersonRef(id_number=receiver[0], pooling_area=receiver[1]),
            relation_code=relation_code,
            commitment=relations_pb2.Commitment(letter_version=letter_version, accepted_at=ts(now)),
            authorised_amount_fen=authorised_amount_fen, consent_by=ts(now + timedelta(seconds=consent_seconds)))
        return self.sign(proposal, sender)

    def answer_consent(self, binding_id: str, signer: str = GANSU, accept: bool = True,
                       method: int = relations_pb2.ATTESTATION_METHOD_FACE, evidence_ref: str | None = None,
                       attested_at: datetime | None = None) -> relations_pb2.AcceptBindingResponse:
        acceptance = relations_pb2.BindingAcceptance(
            header=common_pb2.Header(message_id=unique_id("acc"), sender=signer, receiver="gateway",
                                     created_at=ts(self.clock.now())),
            binding_id=binding_id,
            decision=relations_pb2.CONSENT_DECISION_ACCEPT if accept else relations_pb2.CONSENT_DECISION_REFUSE)
        if accept:
            acceptance.attestation.CopyFrom(relations_pb2.Attestation(
                method=method, evidence_ref=evidence_ref or unique_id("ev"),
                attested_at=ts(attested_at or self.clock.now())))
        return self.relations.AcceptBinding(
            relations_pb2.AcceptBindingRequest(acceptance=self.sign(acceptance, signer)), timeout=10)

    def dissolve(self, binding_id: str, signer: str = XINJIANG) -> relations_pb2.DissolveBindingResponse:
        dissolution = relations_pb2.BindingDissolution(
            header=common_pb2.Header(message_id=unique_id("dis"), sender=signer, receiver="gateway",
                                     created_at=ts(self.clock.now())),
            binding_id=binding_id, reason="MEMBER_REQUEST")
        return self.relations.DissolveBinding(
            relations_pb2.DissolveBindingRequest(dissolution=self.sign(dissolution, signer)), timeout=10)

    def member_change(self, person: tuple[str, str], kind: int,
                      signer: str = GANSU) -> relations_pb2.ReportMemberChangeResponse:
        change = relations_pb2.MemberChange(
            header=common_pb2.Header(message_id=unique_id("mc"), sender=signer, receiver="gateway",
                                     created_at=ts(self.clock.now())),
            person=common_pb2.PersonRef(id_number=person[0], pooling_area=person[1]), kind=kind,
            effective_at=ts(self.clock.now()))
        return self.relations.ReportMemberChange(
            relations_pb2.ReportMemberChangeRequest(change=self.sign(change, signer)), timeout=10)

    def binding(self, binding_id: str, signer: str = XINJIANG) -> relations_pb2.BindingView:
        query = relations_pb2.BindingQuery(
            header=common_pb2.Header(message_id=unique_id("q"), sender=signer, receiver="gateway",
                                     created_at=ts(self.clock.now())),
            binding_id=binding_id)
        return self.relations.GetBinding(relations_pb2.GetBindingRequest(query=self.sign(query, signer)),
                                         timeout=10).binding

    @property
    def relations(self) -> relations_pb2_grpc.RelationsStub:
        return relations_pb2_grpc.RelationsStub(self.channel)

    def get(self, transfer_id: str, signer: str = XINJIANG, timeout: float = 10) -> transfers_pb2.TransferView:
        query = transfers_pb2.TransferQuery(
            header=common_pb2.Header(message_id=unique_id("q"), sender=signer, receiver="gateway",
                                     created_at=ts(self.clock.now())),
            transfer_id=transfer_id)
        answer = self.transfers.GetTransfer(transfers_pb2.GetTransferRequest(query=self.sign(query, signer)),
                                            timeout=timeout)
        return answer.transfer

    def wait_for_state(self, transfer_id: str, state: int, timeout: float = 15) -> transfers_pb2.TransferView:
        return wait_until(lambda: (v := self.get(transfer_id)).state == state and v, timeout,
                          what=f"{transfer_id} to reach {transfers_pb2.TransferState.Name(state)}")

    def verify_receipt(self, receipt: common_pb2.SignedEnvelope, request_payload: bytes) -> common_pb2.Receipt:
        envelope = Envelope(receipt.payload, receipt.payload_type, receipt.signer, receipt.key_id, receipt.alg,
                            receipt.signature)
        assert receipt.signer == "gateway" and receipt.payload_type == "gongji.v1.Receipt"
        assert verify_signature(envelope, self.gateway_public_key()), "receipt signature must verify"
        parsed = common_pb2.Receipt.FromString(receipt.payload)
        assert parsed.request_sha256 == hashlib.sha256(request_payload).digest()
        return parsed

    def counts(self) -> dict[str, int]:
        """Rows per table: proof that a refused call stored nothing."""
        with self.gateway.engine.connect() as conn:
            return {table: conn.execute(select(func.count()).select_from(text(table))).scalar_one()
                    for table in ("requests", "transfers", "transfer_events", "outbox", "bindings", "giver_days",
                                  "member_suspensions", "audit_log")}

    def gateway_outbox_attempts(self, subject_id: str) -> int:
        with self.gateway.engine.connect() as conn:
            return int(conn.execute(text("SELECT coalesce(sum(attempts), 0) FROM outbox WHERE subject_id = :s"),
                                    {"s": subject_id}).scalar_one())

    def wait_for_outbox_idle(self, destination: str) -> None:
        """Until nothing is waiting to go to `destination` (everything sent was acknowledged)."""
        def idle() -> bool:
            with self.gateway.engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM outbox WHERE destination = :d AND status = 'PENDING'"),
                                    {"d": destination}).scalar_one() == 0
        wait_until(idle, what=f"outbox to {destination} drained")

    def wait_for_sweeps(self, count: int = 2) -> None:
        """Until `count` more deadline sweeps have run: after moving the clock, proof that the sweeps saw it
        (two, as one may have read the clock before it moved)."""
        start = self.gateway.sweeps_done
        wait_until(lambda: self.gateway.sweeps_done >= start + count, what=f"{count} deadline sweeps")

    def add_province(self, code: str, name: str, behaviour: Behaviour | None = None) -> RunningStub:
        """Start one more stub province (its seed file under province_stub/seeds) and register it."""
        keys_dir = self.stub_keys_dir
        stub = self.loop_thread.run(start_stub(StubConfig(
            province=code, name=name, gateway=f"127.0.0.1:{self.gateway.port}", keys_dir=keys_dir,
            behaviour=behaviour or Behaviour(), now=clock_reader(self.clock))))
        self.stubs[code] = stub
        register(self.operations, code, name, stub.address, stub.key_id,
                 load_public_key(keys_dir / f"{stub.key_id}.pub"), TEST_POLICY)
        self.signers[code] = EnvelopeSigner(code, stub.key_id, load_private_key(keys_dir / f"{stub.key_id}.key"))
        return stub

    def bind(self, giver: tuple[str, str], receiver: tuple[str, str], relation_code: str, sender: str,
             receiver_province: str) -> str:
        """A binding the receiver's stub consents to by itself; returns its id once ACTIVE."""
        receipt = self.propose(receiver, relation_code, giver=giver, sender=sender,
                               receiver_province=receiver_province).receipt
        binding_id = common_pb2.Receipt.FromString(receipt.payload).subject_id
        wait_until(lambda: self.binding(binding_id, signer=sender).state == relations_pb2.BINDING_STATE_ACTIVE,
                   what=f"binding {binding_id} to become ACTIVE")
        return binding_id

    def close(self) -> None:
        self.channel.close()
        self.ops_channel.close()

        async def stop() -> None:
            for stub in self.stubs.values():
                await stub.stop(0.5)
            await self.gateway.stop(1.0)

        self.loop_thread.run(stop())


# The policy the test stack registers its provinces with: no blackout (so tests pass at any hour of
# Beijing time) and a high daily limit (so one giver can make many transfers); tests of D12 set the
# national values explicitly.
TEST_POLICY = operations_pb2.ProvincePolicy(blackout_start_minute=0, blackout_end_minute=0,
                                            daily_transfer_limit=100_000)


def clock_reader(clock: OffsetClock) -> Callable[[], float]:
    """The gateway's clock as a stub reads it: its provinces' clocks agree with it, moved or not."""
    return lambda: clock.now().timestamp()


def secure_channel(address: str, ca: DevCa, identity: str, server_name: str) -> grpc.Channel:
    """A channel presenting `identity`'s certificate, expecting the server's certificate to name `server_name`."""
    return channel_as(address, server_name, ca.folder, identity)


def register(ops: operations_pb2_grpc.OperationsStub, code: str, name: str, endpoint: str, key_id: str,
             public_key: bytes, policy: operations_pb2.ProvincePolicy | None = None) -> operations_pb2.Province:
    answer = ops.RegisterProvince(operations_pb2.RegisterProvinceRequest(province=operations_pb2.Province(
        code=code, name=name, endpoint=endpoint, policy=policy,
        keys=[operations_pb2.ProvinceKey(key_id=key_id, alg="ed25519", public_key=public_key)])), timeout=5)
    return answer.province


# A test stack's outbox polls and retries quickly: tests wait on what it does, not on its pace.
TEST_OUTBOX = OutboxSettings(poll_interval_seconds=0.05, sweep_interval_seconds=0.05,
                             backoff=Backoff(base_seconds=0.05, max_seconds=0.5))


def start_stack(loop_thread: LoopThread, tmp_path: Path, db_url: str,
                behaviours: dict[str, Behaviour] | None = None, with_stubs: bool = True,
                tls_dir: Path | None = None, stub_keys_dir: Path | None = None, **settings: Any) -> Stack:
    """Gateway first (its port is needed by the stubs), then the stubs, then their registration.

    With `tls_dir`, everything runs with mutual TLS from a development CA made there: the stack's channel
    presents Xinjiang's certificate, the operators' channel an operator's. With `stub_keys_dir`, the stubs
    keep their keys there rather than in the gateway's keys folder (so they see no gateway key file).
    """
    ca = ensure_dev_pki(tls_dir, [XINJIANG, GANSU, "610000"]) if tls_dir is not None else None
    keys_dir = tmp_path / "keys"
    stub_keys = stub_keys_dir or keys_dir
    clock = OffsetClock()
    config = Settings(
        listen="127.0.0.1:0", ops_listen="127.0.0.1:0", database_url=db_url,
        # /metrics only where a test asks: it costs a port and five threads.
        metrics_listen=settings.pop("metrics_listen", ""),
        gateway_key_file=settings.pop("gateway_key_file", keys_dir / "gateway.key"),
        id_hash_key_file=settings.pop("id_hash_key_file", keys_dir / "id-hash.key"),
        data_key_file=settings.pop("data_key_file", keys_dir / "data.keys"),
        # A test stack keeps its keys beside its database, as `make run` does.
        development=settings.pop("development", True),
        # Plaintext unless a test asks for mutual TLS (tests/api/test_mtls.py).
        insecure_dev_plaintext=ca is None,
        tls_cert_file=ca.files("gateway").cert if ca else None, tls_key_file=ca.files("gateway").key if ca else None,
        tls_ca_file=ca.cert_file if ca else None,
        province_call_timeout_seconds=settings.pop("province_call_timeout_seconds", 2.0),
        # As `python -m gateway` chooses: inline for SQLite, a thread pool for PostgreSQL.
        db_threads=settings.pop("db_threads", 0 if db_url.startswith("sqlite") else 4),
        outbox=settings.pop("outbox", TEST_OUTBOX),
        **settings)
    gateway = loop_thread.run(create_gateway(config, clock))
    behaviours = behaviours or {}
    stubs = {}
    for code, name in ((XINJIANG, "新疆"), (GANSU, "甘肃")) if with_stubs else ():
        stubs[code] = loop_thread.run(start_stub(StubConfig(
            province=code, name=name, gateway=f"127.0.0.1:{gateway.port}", keys_dir=stub_keys,
            behaviour=behaviours.get(code, Behaviour()), tls_dir=tls_dir, now=clock_reader(clock))))
    if ca is None:
        channel = grpc.insecure_channel(f"127.0.0.1:{gateway.port}")
        ops_channel = grpc.insecure_channel(f"127.0.0.1:{gateway.ops_port}")
    else:
        channel = secure_channel(f"127.0.0.1:{gateway.port}", ca, f"province-{XINJIANG}", GATEWAY_DNS)
        ops_channel = secure_channel(f"127.0.0.1:{gateway.ops_port}", ca, "operator-operator", GATEWAY_DNS)
    stack = Stack(loop_thread, gateway, clock, stubs, keys_dir, channel, ops_channel, tls=ca, stub_keys=stub_keys_dir)
    for code, stub in stubs.items():
        register(stack.operations, code, stub.config.name, stub.address, stub.key_id,
                 load_public_key(stub_keys / f"{stub.key_id}.pub"), TEST_POLICY)
        stack.signers[code] = EnvelopeSigner(code, stub.key_id, load_private_key(stub_keys / f"{stub.key_id}.key"))
    if with_stubs:
        # The giver and his mother, bound as the seeds' story has it; Gansu's stub consents by itself.
        receipt = stack.propose(MOTHER, relation_code="52").receipt
        stack.binding_id = common_pb2.Receipt.FromString(receipt.payload).subject_id
        wait_until(lambda: stack.binding(stack.binding_id).state == relations_pb2.BINDING_STATE_ACTIVE,
                   what="the giver's binding with his mother to become ACTIVE")
    return stack


NEVER_CONFIRM = Behaviour(confirm_mode=ConfirmMode.NEVER)


class ListedGatewayKeys(keys_pb2_grpc.GatewayKeysServicer):
    """A tiny gongji.v1.GatewayKeys for a stub without a gateway: lists `keys`, counts the questions."""

    def __init__(self, *keys: keys_pb2.GatewayKey) -> None:
        self.keys: list[keys_pb2.GatewayKey] = list(keys)
        self.calls = 0

    async def ListGatewayKeys(self, request: keys_pb2.ListGatewayKeysRequest,
                              context: Any) -> keys_pb2.ListGatewayKeysResponse:
        self.calls += 1
        return keys_pb2.ListGatewayKeysResponse(keys=self.keys)
