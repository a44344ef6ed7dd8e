"""The stub province on its own: a real grpc.aio channel, gateway messages signed by the test.

The test plays the gateway: it lists its key on a tiny gongji.v1.GatewayKeys service (the stub asks
for the gateway's keys there, never in files) and signs what the gateway would send.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import logging
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import (
    common_pb2,
    keys_pb2,
    keys_pb2_grpc,
    province_pb2,
    province_pb2_grpc,
    relations_pb2,
    relations_pb2_grpc,
    transfers_pb2,
    transfers_pb2_grpc,
)
from province_stub import Behaviour, ConfirmMode, ConsentMode, StubConfig, start_stub
from province_stub.__main__ import parse_args
from province_stub.consent import age_on, attestation_for_age
from tests.support import ListedGatewayKeys

SEEDS = Path(__file__).resolve().parents[2] / "province_stub" / "seeds"
GANSU = "620000"
XINJIANG = "650000"
MOTHER = "620102196505120026"  # seeded in Gansu, NORMAL
SUSPENDED = "620102199207070511"  # seeded in Gansu, settlement suspended
GIVER = "650502199001011230"  # seeded in Xinjiang
NOBODY = "620102198001010012"  # not seeded anywhere
GIRL_2010 = "620102201003010023"  # seeded in Gansu, born 2010-03-01: 16 on 2026-03-01
GIRL_2015 = "620102201508160027"  # seeded in Gansu, born 2015-08-16
GANSU_EMPLOYEE = "620103198203040034"  # seeded in Gansu, employee insurance
SEEDED_IDS = (MOTHER, SUSPENDED, GIRL_2010, GIRL_2015, GANSU_EMPLOYEE, GIVER)
NEVER = Behaviour(confirm_mode=ConfirmMode.NEVER)

# --- an independent implementation of the signing scheme, so the stub's is checked, not echoed ---


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(key: Ed25519PrivateKey, signer: str, key_id: str, payload_type: str, payload: bytes) -> Any:
    message = (
        b"\0".join(x.encode("ascii") for x in ("gongji.v1", payload_type, signer, key_id)) + b"\0" + payload
    )
    return common_pb2.SignedEnvelope(
        payload=payload,
        payload_type=payload_type,
        signer=signer,
        key_id=key_id,
        alg="ed25519",
        signature=key.sign(message),
    )


def verified(envelope: Any, public_file: Path) -> bool:
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_file.read_text().strip()))
    parts = (envelope.payload_type, envelope.signer, envelope.key_id)
    message = b"gongji.v1\0" + b"".join(p.encode("ascii") + b"\0" for p in parts) + envelope.payload
    try:
        key.verify(envelope.signature, message)
    except Exception:
        return False
    return True


def header(message_id: str, sender: str, receiver: str) -> Any:
    h = common_pb2.Header(message_id=message_id, sender=sender, receiver=receiver)
    h.created_at.GetCurrentTime()
    return h


class World:
    """The gateway's key, listed by its GatewayKeys service, and the Xinjiang giver province's, in a file."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        keys_dir.mkdir(parents=True, exist_ok=True)
        self.gateway_key = Ed25519PrivateKey.generate()
        self.giver_key = Ed25519PrivateKey.generate()
        self.gateway_keys = ListedGatewayKeys()
        self.counter = 0

    def serve_gateway_keys(self, server: grpc.aio.Server) -> None:
        keys_pb2_grpc.add_GatewayKeysServicer_to_server(self.gateway_keys, server)

    def publish_gateway_key(self) -> None:
        self.gateway_keys.keys.append(
            keys_pb2.GatewayKey(
                key_id="gateway-k1", alg="ed25519", public_key=_raw_public(self.gateway_key), current=True
            )
        )

    def publish_giver_key(self) -> None:
        (self.keys_dir / f"{XINJIANG}-k1.pub").write_text(_raw_public(self.giver_key).hex() + "\n")

    def fresh_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}-{time.time_ns()}"

    def deliver_request(
        self,
        receiver_id: str = MOTHER,
        amount_fen: int = 10000,
        *,
        gateway_key: Ed25519PrivateKey | None = None,
        confirm_by: float | None = None,
    ) -> Any:
        transfer_id = self.fresh_id("t")
        instruction = transfers_pb2.TransferInstruction(
            header=header(transfer_id, XINJIANG, GANSU),
            giver=common_pb2.PersonRef(id_number=GIVER, pooling_area="650500"),
            receiver=common_pb2.PersonRef(id_number=receiver_id, pooling_area="620100"),
            amount_fen=amount_fen,
            currency="CNY",
        )
        payload = instruction.SerializeToString()
        delivery = province_pb2.TransferDelivery(
            header=header(f"dlv:{transfer_id}", "gateway", GANSU),
            transfer_id=transfer_id,
            instruction_sha256=hashlib.sha256(payload).digest(),
        )
        if confirm_by is not None:
            delivery.confirm_by.FromNanoseconds(int(confirm_by * 1e9))
        return province_pb2.DeliverTransferRequest(
            instruction=sign(
                self.giver_key, XINJIANG, f"{XINJIANG}-k1", "gongji.v1.TransferInstruction", payload
            ),
            delivery=self.gateway_sign(
                "gongji.v1.TransferDelivery", delivery.SerializeToString(), gateway_key
            ),
        )

    def gateway_sign(self, payload_type: str, payload: bytes, key: Ed25519PrivateKey | None = None) -> Any:
        return sign(key or self.gateway_key, "gateway", "gateway-k1", payload_type, payload)

    def outcome_request(self, transfer_id: str, state: int) -> Any:
        outcome = province_pb2.Outcome(
            header=header(f"out:{transfer_id}:{state}:{GANSU}", "gateway", GANSU),
            transfer=province_pb2.TransferOutcome(transfer_id=transfer_id, state=state, amount_fen=10000),
        )
        return province_pb2.NotifyOutcomeRequest(
            outcome=self.gateway_sign("gongji.v1.Outcome", outcome.SerializeToString())
        )

    def proposal(self, receiver_id: str = MOTHER, binding_id: str = "", relation_code: str = "52") -> Any:
        """A BindingProposal from the Xinjiang giver province, signed with its key."""
        proposal = relations_pb2.BindingProposal(
            header=header(binding_id or self.fresh_id("b"), XINJIANG, GANSU),
            giver=common_pb2.PersonRef(id_number=GIVER, pooling_area="650500"),
            receiver=common_pb2.PersonRef(id_number=receiver_id, pooling_area="620100"),
            relation_code=relation_code,
            commitment=relations_pb2.Commitment(letter_version="2024-01"),
        )
        return sign(
            self.giver_key, XINJIANG, f"{XINJIANG}-k1", "gongji.v1.BindingProposal", proposal.SerializeToString()
        )

    def consent_request(
        self,
        receiver_id: str = MOTHER,
        *,
        proposal: Any = None,
        gateway_key: Ed25519PrivateKey | None = None,
        proposal_sha256: bytes | None = None,
    ) -> Any:
        proposal = proposal if proposal is not None else self.proposal(receiver_id)
        binding_id = relations_pb2.BindingProposal.FromString(proposal.payload).header.message_id
        consent = province_pb2.ConsentRequest(
            header=header(f"csr:{binding_id}", "gateway", GANSU),
            binding_id=binding_id,
            proposal_sha256=(
                proposal_sha256 if proposal_sha256 is not None else hashlib.sha256(proposal.payload).digest()
            ),
        )
        consent.consent_by.GetCurrentTime()
        return province_pb2.RequestConsentRequest(
            proposal=proposal,
            consent_request=self.gateway_sign(
                "gongji.v1.ConsentRequest", consent.SerializeToString(), gateway_key
            ),
        )

    def binding_outcome_request(self, binding_id: str, state: int) -> Any:
        outcome = province_pb2.Outcome(
            header=header(f"out:{binding_id}:{state}:{GANSU}", "gateway", GANSU),
            binding=province_pb2.BindingOutcome(binding_id=binding_id, state=state, reason="MEMBER_REQUEST"),
        )
        return province_pb2.NotifyOutcomeRequest(
            outcome=self.gateway_sign("gongji.v1.Outcome", outcome.SerializeToString())
        )

    def member_request(self, id_number: str) -> Any:
        query = province_pb2.MemberQuery(
            header=header(self.fresh_id("mq"), "gateway", GANSU),
            person=common_pb2.PersonRef(id_number=id_number),
        )
        return province_pb2.CheckMemberRequest(
            query=self.gateway_sign("gongji.v1.MemberQuery", query.SerializeToString())
        )


Scenario = Callable[[Any, Any, World], Awaitable[None]]


def run_stub(tmp_path: Path, scenario: Scenario, *, publish: bool = True, behaviour: Behaviour = NEVER) -> None:
    """Start a Gansu stub in-process with only the gateway's key list behind it, run the scenario, stop it."""
    run_against_gateway(World(tmp_path / "keys"), scenario, publish=publish, behaviour=behaviour)


def run_against_gateway(world: World, scenario: Scenario, *servicers: Callable[[grpc.aio.Server], None],
                        **stub_options: Any) -> None:
    """Serve the world's gateway key list and `servicers` (each adds a fake gateway service) on a port,
    run the scenario against a Gansu stub calling it (`_with_stub` options), stop both."""

    async def main() -> None:
        gateway = grpc.aio.server()
        for add_servicer in servicers:
            add_servicer(gateway)
        world.serve_gateway_keys(gateway)
        gateway_port = gateway.add_insecure_port("127.0.0.1:0")
        await gateway.start()
        try:
            await _with_stub(world, f"127.0.0.1:{gateway_port}", scenario, **stub_options)
        finally:
            await gateway.stop(0)

    asyncio.run(main())


async def _with_stub(
    world: World,
    gateway: str,
    scenario: Scenario,
    *,
    publish: bool = True,
    behaviour: Behaviour = NEVER,
    today: datetime.date | None = None,
    timeout_s: float = 8.0,
) -> None:
    if publish:
        world.publish_gateway_key()
    # Asking for the gateway's keys again at every unknown key id: these tests list a key mid-scenario.
    config = StubConfig(
        province=GANSU,
        keys_dir=world.keys_dir,
        gateway=gateway,
        behaviour=behaviour,
        gateway_deadline_s=2.0,
        gateway_keys_refetch_s=0.0,
    )
    if today is not None:
        config = dataclasses.replace(config, today=lambda: today)
    stub = await start_stub(config)
    try:
        async with grpc.aio.insecure_channel(stub.address) as channel, \
                grpc.aio.insecure_channel(stub.control_address) as control_channel:
            inbox = province_pb2_grpc.ProvinceInboxStub(channel)
            control = control_pb2_grpc.StubControlStub(control_channel)
            await asyncio.wait_for(scenario(inbox, control, world), timeout=timeout_s)
    finally:
        await stub.stop(0)


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The stable reason in a refusal's google.rpc.ErrorInfo detail."""
    trailer = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailer["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return str(info.reason)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


ACCEPTED = province_pb2.DELIVERY_DECISION_ACCEPTED
REJECTED = province_pb2.DELIVERY_DECISION_REJECTED

# --- seeds ---

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def gb11643_valid(id_number: str) -> bool:
    if len(id_number) != 18 or not id_number[:17].isdigit():
        return False
    check = "10X98765432"[sum(int(d) * w for d, w in zip(id_number[:17], WEIGHTS, strict=True)) % 11]
    try:
        born = datetime.date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))
    except ValueError:
        return False
    return id_number[17].upper() == check and born <= datetime.date.today()


def test_every_seed_id_number_is_valid() -> None:
    files = sorted(SEEDS.glob("*.toml"))
    assert {f.stem for f in files} >= {GANSU, XINJIANG}
    for file in files:
        seed = tomllib.loads(file.read_text(encoding="utf-8"))
        assert seed["province"] == file.stem
        ids = [p["id_number"] for p in seed["people"]]
        assert len(ids) == len(set(ids)) >= 4
        for person in seed["people"]:
            assert gb11643_valid(person["id_number"]), person["id_number"]
            assert person["id_number"][:2] == file.stem[:2]
            assert person["pooling_area"][:2] == file.stem[:2]
            assert person["insutype"] in ("310", "390")
            assert person["status"] in ("NORMAL", "INACTIVE")
    assert gb11643_valid("620102196505120026")
    assert not gb11643_valid("620102196505120027")


# --- the inbox ---


def test_accepted_delivery_holds_one_pending_credit_even_when_redelivered(tmp_path: Path) -> None:
    async def scenario(inbox: Any, control: Any, world: World) -> None:
        world.publish_giver_key()
        request = world.deliver_request(amount_fen=12345)
        first = await inbox.DeliverTransfer(request)
        again = await inbox.DeliverTransfer(request)
        assert first.decision == again.decision == ACCEPTED
        snapshot = await control.Snapshot(control_pb2.SnapshotRequest())
        assert snapshot.province == GANSU
        assert snapshot.deliveries_received == 2
        assert [(c.amount_fen, c.status) for c in snapshot.credits] == [(12345, "PENDING")]

    run_stub(tmp_path, scenario)


def test_rejections(tmp_path: Path) -> None:
    async def scenario(inbox: Any, control: Any, world: World) -> None:
        forged = world.deliver_request(gateway_key=Ed25519PrivateKey.generate())
        answer = await inbox.DeliverTransfer(forged)
        assert (answer.decision, answer.reject_reason) == (REJECTED, "BAD_GATEWAY_SIGNATURE")

        answer = await inbox.DeliverTransfer(world.deliver_request(NOBODY))
        assert (answer.decision, answer.reject_reason) == (REJECTED, "RECEIVER_NOT_INSURED")
        answer = await inbox.DeliverTransfer(world.deliver_request(SUSPENDED))
        assert (answer.decision, answer.reject_reason) == (REJECTED, "SETTLEMENT_SUSPENDED")

        # The giver province's key is known now, and this instruction was not signed with it.
        world.publish_giver_key()
        tampered = world.deliver_request()
        tampered.instruction.signature = bytes(64)
        answer = await inbox.DeliverTransfer(tampered)
        assert (answer.decision, answer.reject_reason) == (REJECTED, "BAD_INSTRUCTION_SIGNATURE")

        await control.Configure(
            control_pb2.Behaviour(confirm_mode=control_pb2.CONFIRM_MODE_NEVER, reject_reason="X")
        )
        answer = await inbox.DeliverTransfer(world.deliver_request())
        assert (answer.decision, answer.reject_reason) == (REJECTED, "X")

        snapshot = await control.Snapshot(control_pb2.SnapshotRequest())
        assert not snapshot.credits

    run_stub(tmp_path, scenario)


def test_gateway_key_is_used_once_the_gateway_lists_it(tmp_path: Path) -> None:
    async def scenario(inbox: Any, control: Any, world: World) -> None:
        # Key files are not where the stub looks for the gateway's keys, whatever their name.
        for name in ("gateway.pub", "gateway-k1.pub"):
            (world.keys_dir / name).write_text(_raw_public(world.gateway_key).hex() + "\n")
        request = world.deliver_request()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await inbox.DeliverTransfer(request)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        world.publish_gateway_key()
        assert (await inbox.DeliverTransfer(request)).decision == ACCEPTED

    run_stub(tmp_path, scenario, publish=False)


def test_injected_failures_then_success(tmp_path: Path) -> None:
    async def scenario(inbox: Any, control: Any, world: World) -> None:
        behaviour = await control.Configure(
            control_pb2.Behaviour(confirm_mode=control_pb2.CONFIRM_MODE_NEVER, fail_next_calls=2)
        )
        assert behaviour.fail_next_calls == 2
        request = world.deliver_request()
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await inbox.DeliverTransfer(request)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await inbox.DeliverTransfer(request)).decision == ACCEPTED
        snapshot = await control.Snapshot(control_pb2.SnapshotRequest())
        assert (snapshot.calls_failed, snapshot.deliveries_received, len(snapshot.credits)) == (2, 1, 1)

        unspecified = await control.Configure(control_pb2.Behaviour())
        assert unspecified.confirm_mode == control_pb2.CONFIRM_MODE_IMMEDIATE

    run_stub(tmp_path, scenario)


def test_outcome_is_recorded_once_and_settles_the_credit(tmp_path: Path) -> None:
    async def scenario(inbox: Any, control: Any, world: World) -> None:
        request = world.deliver_request()
        assert (await inbox.DeliverTransfer(request)).decision == ACCEPTED
        transfer_id = transfers_pb2.TransferInstruction.FromString(
            request.instruction.payload
        ).header.message_id
        outcome = world.outcome_request(transfer_id, transfers_pb2.TRANSFER_STATE_COMMITTED)
        await inbox.NotifyOutcome(outcome)
        await inbox.NotifyOutcome(outcome)
        snapshot = await control.Snapshot(control_pb2.SnapshotRequest())
        assert len(snapshot.notifications) == 1
        told = snapshot.notifications[0]
        assert (told.transfer_id, told.state, told.times_received) == (
            transfer_id,
            transfers_pb2.TRANSFER_STATE_COMMITTED,
            2,
        )
        assert abs(told.received_at - time.time()) < 60
        assert [c.status for c in snapshot.credits] == ["CREDITED"]

        forged = world.outcome_request(transfer_id, transfers_pb2.TRANSFER_STATE_RETURNED)
        forged.outcome.signature = bytes(64)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await inbox.NotifyOutcome(forged)
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED

    run_stub(tmp_path, scenario)


def test_check_member(tmp_path: Path) -> None:
    async def scenario(inbox: Any, control: Any, world: World) -> None:
        known = await inbox.CheckMember(world.member_request(MOTHER))
        assert (
            known.status,
            known.insutype,
            known.pooling_area,
            known.wallet_open,
            known.settlement_suspended,
        ) == (
            province_pb2.MEMBER_STATUS_NORMAL,
            "390",
            "620100",
            True,
            False,
        )
        unknown = await inbox.CheckMember(world.member_request(NOBODY))
        assert unknown.status == province_pb2.MEMBER_STATUS_NOT_FOUND

    run_stub(tmp_path, scenario)


# --- consent requests and binding outcomes (inbox) ---

CONSENT_NEVER = Behaviour(confirm_mode=ConfirmMode.NEVER, consent_mode=ConsentMode.NEVER)


def binding_id_of(request: Any) -> str:
    return str(relations_pb2.BindingProposal.FromString(request.proposal.payload).header.message_id)


def test_consent_request_is_recorded_once_per_binding(tmp_path: Path) -> None:
    async def scenario(inbox: Any, control: Any, world: World) -> None:
        behaviour = await control.Configure(
            control_pb2.Behaviour(consent_mode=control_pb2.CONSENT_MODE_NEVER, fail_next_calls=1)
        )
        assert behaviour.consent_mode == control_pb2.CONSENT_MODE_NEVER
        first, second = world.consent_request(MOTHER), world.consent_request(GIRL_2010)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await inbox.RequestConsent(first)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        for request in (first, first, second, first):
            assert await inbox.RequestConsent(request) == province_pb2.RequestConsentResponse()
        snapshot = await control.Snapshot(control_pb2.SnapshotRequest())
        assert snapshot.consent_requests_received == 4
        assert list(snapshot.consent_requests) == [binding_id_of(first), binding_id_of(second)]

        unspecified = await control.Configure(control_pb2.Behaviour())
        assert unspecified.consent_mode == control_pb2.CONSENT_MODE_ACCEPT
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await control.Configure(control_pb2.Behaviour(consent_mode=99))
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run_stub(tmp_path, scenario, behaviour=CONSENT_NEVER)


def test_consent_request_refusals(tmp_path: Path) -> None:
    async def scenario(inbox: Any, control: Any, world: World) -> None:
        async def refused(request: Any) -> grpc.StatusCode:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await inbox.RequestConsent(request)
            return failed.value.code()

        # Until the gateway lists its key the request is not ours to judge: retry later.
        assert await refused(world.consent_request()) == grpc.StatusCode.UNAVAILABLE
        world.publish_gateway_key()
        forged = world.consent_request(gateway_key=Ed25519PrivateKey.generate())
        assert await refused(forged) == grpc.StatusCode.UNAUTHENTICATED
        wrong_type = world.consent_request()
        wrong_type.consent_request.CopyFrom(
            world.gateway_sign("gongji.v1.Outcome", wrong_type.consent_request.payload)
        )
        assert await refused(wrong_type) == grpc.StatusCode.UNAUTHENTICATED
        mismatch = world.consent_request(proposal_sha256=bytes(32))
        assert await refused(mismatch) == grpc.StatusCode.INVALID_ARGUMENT
        # The gateway vouches for another proposal than the one passed along.
        swapped = world.consent_request()
        swapped.proposal.CopyFrom(world.proposal())
        assert await refused(swapped) == grpc.StatusCode.INVALID_ARGUMENT
        garbage = world.consent_request(proposal_sha256=hashlib.sha256(b"\xff\xff").digest())
        garbage.proposal.payload = b"\xff\xff"
        assert await refused(garbage) == grpc.StatusCode.INVALID_ARGUMENT
        # The giver province's key is known now, and this proposal was not signed with it.
        world.publish_giver_key()
        tampered = world.proposal()
        tampered.signature = bytes(64)
        assert await refused(world.consent_request(proposal=tampered)) == grpc.StatusCode.UNAUTHENTICATED
        assert await inbox.RequestConsent(world.consent_request()) == province_pb2.RequestConsentResponse()

        snapshot = await control.Snapshot(control_pb2.SnapshotRequest())
        assert (snapshot.consent_requests_received, len(snapshot.consent_requests)) == (1, 1)

    run_stub(tmp_path, scenario, publish=False, behaviour=CONSENT_NEVER)


def test_binding_outcome_is_recorded_once(tmp_path: Path) -> None:
    async def scenario(inbox: Any, control: Any, world: World) -> None:
        outcome = world.binding_outcome_request("650000-b-1", relations_pb2.BINDING_STATE_DISSOLVED)
        await inbox.NotifyOutcome(outcome)
        await inbox.NotifyOutcome(outcome)
        snapshot = await control.Snapshot(control_pb2.SnapshotRequest())
        assert len(snapshot.notifications) == 1
        told = snapshot.notifications[0]
        assert (told.binding_id, told.binding_state, told.transfer_id, told.state, told.times_received) == (
            "650000-b-1",
            relations_pb2.BINDING_STATE_DISSOLVED,
            "",
            transfers_pb2.TRANSFER_STATE_UNSPECIFIED,
            2,
        )
        assert told.message_id == f"out:650000-b-1:{relations_pb2.BINDING_STATE_DISSOLVED}:{GANSU}"

    run_stub(tmp_path, scenario)


# --- the D6 age rule ---


@pytest.mark.parametrize(
    ("born", "day", "age"),
    [
        (datetime.date(2010, 3, 1), datetime.date(2026, 2, 28), 15),
        (datetime.date(2010, 3, 1), datetime.date(2026, 3, 1), 16),
        (datetime.date(2000, 2, 29), datetime.date(2001, 2, 28), 0),  # common year: not yet on 28 Feb
        (datetime.date(2000, 2, 29), datetime.date(2001, 3, 1), 1),  # ... but on 1 March
        (datetime.date(2000, 2, 29), datetime.date(2004, 2, 29), 4),
        (datetime.date(2000, 2, 29), datetime.date(2000, 2, 29), 0),
    ],
)
def test_age_in_full_years(born: datetime.date, day: datetime.date, age: int) -> None:
    assert age_on(born, day) == age


@pytest.mark.parametrize(
    ("id_number", "day", "method"),
    [
        (MOTHER, datetime.date(2026, 2, 28), relations_pb2.ATTESTATION_METHOD_FACE),
        (GIRL_2010, datetime.date(2026, 2, 28), relations_pb2.ATTESTATION_METHOD_GUARDIAN_DOCUMENT),
        (GIRL_2010, datetime.date(2026, 3, 1), relations_pb2.ATTESTATION_METHOD_FACE),
        # Born 29 Feb 2084; 2100 is a common year, so the 16th birthday falls on 1 March.
        ("620102208402290020", datetime.date(2100, 2, 28), relations_pb2.ATTESTATION_METHOD_GUARDIAN_DOCUMENT),
        ("620102208402290020", datetime.date(2100, 3, 1), relations_pb2.ATTESTATION_METHOD_FACE),
        # An unreadable birth date gets the stricter requirement.
        ("620102201013450020", datetime.date(2026, 1, 1), relations_pb2.ATTESTATION_METHOD_FACE),
    ],
)
def test_attestation_by_age(id_number: str, day: datetime.date, method: int) -> None:
    assert attestation_for_age(id_number, day) == method


# --- the client side, against a fake gateway ---


def gateway_receipt(world: World, envelope: Any, state: str, *, forged: bool = False) -> Any:
    receipt = common_pb2.Receipt(
        request_sha256=hashlib.sha256(envelope.payload).digest(),
        request_payload_type=envelope.payload_type,
        state=state,
    )
    key = Ed25519PrivateKey.generate() if forged else None
    return world.gateway_sign("gongji.v1.Receipt", receipt.SerializeToString(), key)


def not_found(reason: str) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata of a NOT_FOUND carrying ErrorInfo(reason), as the gateway sends it."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain="gongji.v1")
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="not found")
    status.details.append(detail)
    return tuple(rpc_status.to_status(status).trailing_metadata)


class FakeGateway(transfers_pb2_grpc.TransfersServicer):
    """Signs receipts like the gateway; fails the first confirmations (UNAVAILABLE) to exercise the retry."""

    def __init__(self, world: World, fail_first: int = 1) -> None:
        self.world = world
        self.confirmations: list[Any] = []
        self.submissions: list[Any] = []
        self.failures_left = fail_first

    def _receipt(self, envelope: Any, state: str) -> Any:
        return gateway_receipt(self.world, envelope, state)

    async def SubmitTransfer(self, request: Any, context: Any) -> Any:
        self.submissions.append(request.instruction)
        instruction = transfers_pb2.TransferInstruction.FromString(request.instruction.payload)
        return transfers_pb2.SubmitTransferResponse(
            receipt=self._receipt(request.instruction, "TRANSFER_STATE_RECEIVED"),
            transfer_id=instruction.header.message_id,
            state=transfers_pb2.TRANSFER_STATE_RECEIVED,
            replay=len(self.submissions) > 1,
        )

    async def ConfirmTransfer(self, request: Any, context: Any) -> Any:
        self.confirmations.append(request.confirmation)
        if self.failures_left > 0:
            self.failures_left -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return transfers_pb2.ConfirmTransferResponse(
            receipt=self._receipt(request.confirmation, "TRANSFER_STATE_COMMITTED"),
            state=transfers_pb2.TRANSFER_STATE_COMMITTED,
        )

    async def GetTransfer(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such transfer", not_found("TRANSFER_NOT_FOUND"))

    def serve(self, server: grpc.aio.Server) -> None:
        transfers_pb2_grpc.add_TransfersServicer_to_server(self, server)


def test_client_side_against_a_fake_gateway(tmp_path: Path) -> None:
    world = World(tmp_path / "keys")
    fake = FakeGateway(world)

    async def scenario(inbox: Any, control: Any, world_: World) -> None:
        # Automatic confirmation after acceptance, retried past one UNAVAILABLE.
        await control.Configure(control_pb2.Behaviour(confirm_mode=control_pb2.CONFIRM_MODE_IMMEDIATE))
        request = world_.deliver_request()
        assert (await inbox.DeliverTransfer(request)).decision == ACCEPTED
        await eventually(lambda: len(fake.confirmations) >= 2)
        first, second = fake.confirmations[:2]
        assert first == second  # the retry resends the same bytes
        assert verified(second, world_.keys_dir / f"{GANSU}-k1.pub")
        confirmation = transfers_pb2.TransferConfirmation.FromString(second.payload)
        assert confirmation.decision == transfers_pb2.CONFIRMATION_DECISION_CREDITED
        assert confirmation.header.sender == GANSU

        submitted = await control.SubmitTransfer(
            control_pb2.StubSubmitRequest(
                giver_id_number="620103198203040034",
                receiver_id_number=GIVER,
                receiver_pooling_area="650500",
                receiver_province=XINJIANG,
                amount_fen=500,
            )
        )
        assert (submitted.code, submitted.state, submitted.receipt_verified) == (
            "OK",
            transfers_pb2.TRANSFER_STATE_RECEIVED,
            True,
        )
        instruction = transfers_pb2.TransferInstruction.FromString(fake.submissions[0].payload)
        assert instruction.header.message_id == submitted.transfer_id
        assert (instruction.giver.pooling_area, instruction.currency) == ("620100", "CNY")

        again = await control.Resubmit(control_pb2.ResubmitRequest(transfer_id=submitted.transfer_id))
        assert fake.submissions[1] == fake.submissions[0]
        assert (again.replay, again.receipt_sha256) == (True, submitted.receipt_sha256)
        await control.Resubmit(
            control_pb2.ResubmitRequest(transfer_id=submitted.transfer_id, modify=True)
        )
        modified = transfers_pb2.TransferInstruction.FromString(fake.submissions[2].payload)
        assert modified.amount_fen == 501 and modified.header.message_id == submitted.transfer_id

        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await control.QueryTransfer(control_pb2.QueryTransferRequest(transfer_id="nope"))
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason_of(failed.value) == "TRANSFER_NOT_FOUND"

    run_against_gateway(world, scenario, fake.serve)


def test_automatic_confirmation_is_resent_until_the_deliverys_confirm_by(tmp_path: Path) -> None:
    """A gateway away for a while (a restart) still gets the confirmation; past confirm_by, no more tries."""
    world = World(tmp_path / "keys")
    fake = FakeGateway(world, fail_first=6)  # one more than the attempts given to a delivery with no deadline

    def attempts_for(transfer_id: str) -> list[Any]:
        return [c for c in fake.confirmations
                if transfers_pb2.TransferConfirmation.FromString(c.payload).transfer_id == transfer_id]

    async def scenario(inbox: Any, control: Any, world_: World) -> None:
        await control.Configure(control_pb2.Behaviour(confirm_mode=control_pb2.CONFIRM_MODE_IMMEDIATE))
        patient = world_.deliver_request(confirm_by=time.time() + 60)
        transfer_id = transfers_pb2.TransferInstruction.FromString(patient.instruction.payload).header.message_id
        assert (await inbox.DeliverTransfer(patient)).decision == ACCEPTED
        await eventually(lambda: len(attempts_for(transfer_id)) == 7, timeout_s=15)
        await asyncio.sleep(0.5)
        assert len(attempts_for(transfer_id)) == 7  # answered OK on the 7th: no more
        assert len({c.SerializeToString() for c in attempts_for(transfer_id)}) == 1  # the same bytes

        fake.failures_left = 1_000_000  # the gateway stays away
        hurried = world_.deliver_request(confirm_by=time.time() + 1.0)
        late_id = transfers_pb2.TransferInstruction.FromString(hurried.instruction.payload).header.message_id
        assert (await inbox.DeliverTransfer(hurried)).decision == ACCEPTED
        await asyncio.sleep(2.5)
        tried = len(attempts_for(late_id))
        await asyncio.sleep(2.0)
        assert 2 <= tried == len(attempts_for(late_id)), "tries went on past confirm_by"

    run_against_gateway(world, scenario, fake.serve, timeout_s=30)


class FakeRelations(relations_pb2_grpc.RelationsServicer):
    """Records what the stub sends; fails the first acceptance to exercise the retry."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.proposals: list[Any] = []
        self.acceptances: list[Any] = []
        self.dissolutions: list[Any] = []
        self.changes: list[Any] = []
        self.queries: list[Any] = []
        self.forge_receipts = False

    def serve(self, server: grpc.aio.Server) -> None:
        relations_pb2_grpc.add_RelationsServicer_to_server(self, server)

    def _receipt(self, envelope: Any, state: str) -> Any:
        return gateway_receipt(self.world, envelope, state, forged=self.forge_receipts)

    async def ProposeBinding(self, request: Any, context: Any) -> Any:
        self.proposals.append(request.proposal)
        return relations_pb2.ProposeBindingResponse(
            receipt=self._receipt(request.proposal, "PROPOSED"), state=relations_pb2.BINDING_STATE_PROPOSED
        )

    async def AcceptBinding(self, request: Any, context: Any) -> Any:
        self.acceptances.append(request.acceptance)
        if len(self.acceptances) == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        accepted = (
            relations_pb2.BindingAcceptance.FromString(request.acceptance.payload).decision
            == relations_pb2.CONSENT_DECISION_ACCEPT
        )
        replay = sum(a == request.acceptance for a in self.acceptances) > 1
        return relations_pb2.AcceptBindingResponse(
            receipt=self._receipt(request.acceptance, "ACTIVE" if accepted else "REFUSED"),
            replay=replay,
            state=relations_pb2.BINDING_STATE_ACTIVE if accepted else relations_pb2.BINDING_STATE_REFUSED,
        )

    async def DissolveBinding(self, request: Any, context: Any) -> Any:
        self.dissolutions.append(request.dissolution)
        return relations_pb2.DissolveBindingResponse(
            receipt=self._receipt(request.dissolution, "DISSOLVED"), state=relations_pb2.BINDING_STATE_DISSOLVED
        )

    async def ReportMemberChange(self, request: Any, context: Any) -> Any:
        self.changes.append(request.change)
        return relations_pb2.ReportMemberChangeResponse(
            receipt=self._receipt(request.change, "SUSPENDED"), affected_binding_ids=["x"]
        )

    async def GetBinding(self, request: Any, context: Any) -> Any:
        self.queries.append(request.query)
        binding_id = relations_pb2.BindingQuery.FromString(request.query.payload).binding_id
        known = {relations_pb2.BindingProposal.FromString(p.payload).header.message_id for p in self.proposals}
        if binding_id not in known:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such binding", not_found("BINDING_NOT_FOUND"))
        return relations_pb2.GetBindingResponse(
            binding=relations_pb2.BindingView(binding_id=binding_id, state=relations_pb2.BINDING_STATE_PROPOSED)
        )


def run_with_fake_relations(
    fake: FakeRelations, scenario: Scenario, *, behaviour: Behaviour = NEVER, today: datetime.date | None = None
) -> None:
    """Serve `fake` as the gateway's Relations, run the scenario against a Gansu stub using it."""
    run_against_gateway(fake.world, scenario, fake.serve, behaviour=behaviour, today=today)


def acceptance_of(envelope: Any, world: World) -> Any:
    """The BindingAcceptance in an envelope, after checking it is the Gansu stub's, signed and addressed."""
    assert (envelope.signer, envelope.payload_type) == (GANSU, "gongji.v1.BindingAcceptance")
    assert verified(envelope, world.keys_dir / f"{GANSU}-k1.pub")
    acceptance = relations_pb2.BindingAcceptance.FromString(envelope.payload)
    assert acceptance.header.message_id == f"acc:{acceptance.binding_id}"
    assert (acceptance.header.sender, acceptance.header.receiver) == (GANSU, "gateway")
    assert acceptance.header.created_at.seconds > 0
    return acceptance


def test_consent_answers_against_a_fake_gateway(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    world = World(tmp_path / "keys")
    fake = FakeRelations(world)

    def received(binding_id: str) -> list[Any]:
        return [a for a in fake.acceptances if acceptance_of(a, world).binding_id == binding_id]

    async def scenario(inbox: Any, control: Any, world_: World) -> None:
        # ACCEPT (the default): by age on the pinned date, 2026-02-28, the day before the girl turns 16.
        adult, child = world_.consent_request(MOTHER), world_.consent_request(GIRL_2010)
        await inbox.RequestConsent(adult)
        await eventually(lambda: len(received(binding_id_of(adult))) >= 2)
        first, retry = received(binding_id_of(adult))
        assert first == retry  # the retry after UNAVAILABLE resends the same bytes
        await inbox.RequestConsent(child)
        await eventually(lambda: len(received(binding_id_of(child))) == 1)
        for request, method, prefix in (
            (adult, relations_pb2.ATTESTATION_METHOD_FACE, "FACE-"),
            (child, relations_pb2.ATTESTATION_METHOD_GUARDIAN_DOCUMENT, "HUKOU-"),
        ):
            acceptance = acceptance_of(received(binding_id_of(request))[-1], world_)
            assert acceptance.decision == relations_pb2.CONSENT_DECISION_ACCEPT
            assert (acceptance.attestation.method, acceptance.attestation.evidence_ref[: len(prefix)]) == (
                method,
                prefix,
            )
            assert len(acceptance.attestation.evidence_ref) > len(prefix)
            assert acceptance.attestation.attested_at.seconds > 0

        # NEVER, then REFUSE: by the time the refusal arrives, the earlier request would have been answered.
        await control.Configure(control_pb2.Behaviour(consent_mode=control_pb2.CONSENT_MODE_NEVER))
        unanswered = world_.consent_request(MOTHER)
        await inbox.RequestConsent(unanswered)
        await control.Configure(control_pb2.Behaviour(consent_mode=control_pb2.CONSENT_MODE_REFUSE))
        refused = world_.consent_request(GIRL_2015)
        await inbox.RequestConsent(refused)
        await eventually(lambda: len(received(binding_id_of(refused))) == 1)
        refusal = acceptance_of(received(binding_id_of(refused))[0], world_)
        assert refusal.decision == relations_pb2.CONSENT_DECISION_REFUSE
        assert not refusal.HasField("attestation")
        assert received(binding_id_of(unanswered)) == []

        # Forced methods, whatever the age.
        for mode, receiver, method in (
            (control_pb2.CONSENT_MODE_ACCEPT_GUARDIAN, MOTHER, relations_pb2.ATTESTATION_METHOD_GUARDIAN_DOCUMENT),
            (control_pb2.CONSENT_MODE_ACCEPT_FACE, GIRL_2015, relations_pb2.ATTESTATION_METHOD_FACE),
        ):
            await control.Configure(control_pb2.Behaviour(consent_mode=mode))
            request = world_.consent_request(receiver)
            await inbox.RequestConsent(request)
            await eventually(lambda r=request: len(received(binding_id_of(r))) == 1)
            assert acceptance_of(received(binding_id_of(request))[0], world_).attestation.method == method

        # By hand: one attempt each, the same answer resent byte for byte.
        manual = control_pb2.AnswerConsentRequest(binding_id=binding_id_of(unanswered))
        answered = await control.AnswerConsent(manual)
        assert (answered.subject_id, answered.code, answered.state, answered.replay) == (
            binding_id_of(unanswered),
            "OK",
            "ACTIVE",
            False,
        )
        again = await control.AnswerConsent(manual)
        assert (again.code, again.replay) == ("OK", True)
        first, second = received(binding_id_of(unanswered))
        assert first == second
        assert acceptance_of(first, world_).attestation.method == relations_pb2.ATTESTATION_METHOD_FACE
        for bad, code in (
            (control_pb2.AnswerConsentRequest(binding_id="never-asked"), grpc.StatusCode.NOT_FOUND),
            (
                control_pb2.AnswerConsentRequest(binding_id=manual.binding_id, mode=control_pb2.CONSENT_MODE_NEVER),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await control.AnswerConsent(bad)
            assert failed.value.code() == code

    run_with_fake_relations(
        fake, scenario, behaviour=Behaviour(confirm_mode=ConfirmMode.NEVER), today=datetime.date(2026, 2, 28)
    )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "consent requested binding=" in logged
    assert not any(id_number in logged for id_number in SEEDED_IDS)


def test_binding_calls_against_a_fake_gateway(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    world = World(tmp_path / "keys")
    stub_key = world.keys_dir / f"{GANSU}-k1.pub"
    fake = FakeRelations(world)

    def signed(envelope: Any, payload_type: str) -> None:
        assert (envelope.signer, envelope.payload_type) == (GANSU, payload_type)
        assert verified(envelope, stub_key)

    async def scenario(inbox: Any, control: Any, world_: World) -> None:
        proposed = await control.ProposeBinding(
            control_pb2.StubProposeRequest(
                giver_id_number=GANSU_EMPLOYEE,
                receiver_id_number=GIVER,
                receiver_pooling_area="650500",
                receiver_province=XINJIANG,
                relation_code="20",
                authorised_amount_fen=50000,
            )
        )
        assert (proposed.code, proposed.state, proposed.replay) == ("OK", "PROPOSED", False)
        assert proposed.subject_id.startswith(f"{GANSU}-b-")
        signed(fake.proposals[0], "gongji.v1.BindingProposal")
        proposal = relations_pb2.BindingProposal.FromString(fake.proposals[0].payload)
        assert (proposal.header.message_id, proposal.header.sender, proposal.header.receiver) == (
            proposed.subject_id,
            GANSU,
            XINJIANG,
        )
        assert (proposal.giver.id_number, proposal.giver.pooling_area) == (GANSU_EMPLOYEE, "620100")
        assert (proposal.receiver.id_number, proposal.receiver.pooling_area) == (GIVER, "650500")
        assert (proposal.relation_code, proposal.authorised_amount_fen) == ("20", 50000)
        assert proposal.commitment.letter_version == "2024-01"
        assert proposal.commitment.accepted_at.seconds > 0
        assert proposal.consent_by.seconds - proposal.header.created_at.seconds == 86400

        chosen = await control.ProposeBinding(
            control_pb2.StubProposeRequest(
                giver_id_number=GANSU_EMPLOYEE,
                receiver_id_number=GIVER,
                receiver_pooling_area="650500",
                receiver_province=XINJIANG,
                relation_code="20",
                binding_id="620000-b-chosen",
                consent_seconds=60,
            )
        )
        assert chosen.subject_id == "620000-b-chosen"
        second = relations_pb2.BindingProposal.FromString(fake.proposals[1].payload)
        assert second.header.message_id == "620000-b-chosen"
        assert second.consent_by.seconds - second.header.created_at.seconds == 60

        dissolved = await control.DissolveBinding(control_pb2.StubDissolveRequest(binding_id="620000-b-chosen"))
        assert (dissolved.subject_id, dissolved.code, dissolved.state) == ("620000-b-chosen", "OK", "DISSOLVED")
        signed(fake.dissolutions[0], "gongji.v1.BindingDissolution")
        dissolution = relations_pb2.BindingDissolution.FromString(fake.dissolutions[0].payload)
        assert (dissolution.binding_id, dissolution.reason) == ("620000-b-chosen", "MEMBER_REQUEST")
        assert (dissolution.header.sender, dissolution.header.receiver) == (GANSU, "gateway")
        assert dissolution.header.message_id
        await control.DissolveBinding(control_pb2.StubDissolveRequest(binding_id="x", reason="MOVED_AWAY"))
        again = relations_pb2.BindingDissolution.FromString(fake.dissolutions[1].payload)
        assert again.reason == "MOVED_AWAY" and again.header.message_id != dissolution.header.message_id

        changed = await control.ReportMemberChange(
            control_pb2.StubMemberChangeRequest(
                id_number=SUSPENDED, kind=relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED
            )
        )
        assert (changed.code, changed.state) == ("OK", "SUSPENDED")
        signed(fake.changes[0], "gongji.v1.MemberChange")
        change = relations_pb2.MemberChange.FromString(fake.changes[0].payload)
        assert change.header.message_id == changed.subject_id
        assert (change.header.sender, change.header.receiver) == (GANSU, "gateway")
        assert (change.person.id_number, change.person.pooling_area) == (SUSPENDED, "620100")
        assert change.kind == relations_pb2.MEMBER_CHANGE_KIND_SETTLEMENT_SUSPENDED
        assert change.effective_at.seconds > 0
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await control.ReportMemberChange(
                control_pb2.StubMemberChangeRequest(
                    id_number=NOBODY, kind=relations_pb2.MEMBER_CHANGE_KIND_INSURANCE_ENDED
                )
            )
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(fake.changes) == 1

        view = await control.QueryBinding(control_pb2.QueryBindingRequest(binding_id=proposed.subject_id))
        assert (view.binding.binding_id, view.binding.state) == (
            proposed.subject_id,
            relations_pb2.BINDING_STATE_PROPOSED,
        )
        signed(fake.queries[0], "gongji.v1.BindingQuery")
        query = relations_pb2.BindingQuery.FromString(fake.queries[0].payload)
        assert (query.binding_id, query.header.sender, query.header.receiver) == (proposed.subject_id, GANSU, "gateway")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await control.QueryBinding(control_pb2.QueryBindingRequest(binding_id="nope"))
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason_of(failed.value) == "BINDING_NOT_FOUND"

        # A receipt the gateway did not sign says nothing about the state.
        fake.forge_receipts = True
        unproven = await control.DissolveBinding(control_pb2.StubDissolveRequest(binding_id=proposed.subject_id))
        assert (unproven.code, unproven.state) == ("OK", "")

    run_with_fake_relations(fake, scenario)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not any(id_number in logged for id_number in SEEDED_IDS)


# --- the command line ---


def test_command_line() -> None:
    config = parse_args(["--province", "650000", "--confirm", "delay:250", "--fail-next", "3"])
    assert (config.signing_key_id, config.listen, config.gateway) == (
        "650000-k1",
        "127.0.0.1:50061",
        "127.0.0.1:50051",
    )
    assert (config.behaviour.confirm_mode, config.behaviour.confirm_delay_ms) == (ConfirmMode.DELAY, 250)
    assert config.behaviour.fail_next_calls == 3
    for bad in ("delay", "later", "never:5"):
        with pytest.raises(SystemExit):
            parse_args(["--province", "650000", "--confirm", bad])
    assert config.behaviour.consent_mode is ConsentMode.ACCEPT
    for flag, mode in (
        ("accept", ConsentMode.ACCEPT),
        ("face", ConsentMode.FACE),
        ("guardian", ConsentMode.GUARDIAN),
        ("refuse", ConsentMode.REFUSE),
        ("never", ConsentMode.NEVER),
    ):
        assert parse_args(["--province", "620000", "--consent", flag]).behaviour.consent_mode is mode
        assert Behaviour.from_proto(Behaviour(consent_mode=mode).to_proto()).consent_mode is mode
    with pytest.raises(SystemExit):
        parse_args(["--province", "620000", "--consent", "maybe"])


def test_command_line_keeps_the_control_port_on_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_args(["--province", "650000"])
    assert (config.control_listen, config.max_clock_skew_s) == ("127.0.0.1:0", 120.0)
    for address in ("127.0.0.1:50071", "localhost:50071", "[::1]:50071"):
        assert parse_args(["--province", "650000", "--control-listen", address]).control_listen == address
    for address in ("0.0.0.0:50071", "192.168.1.20:50071", "[::]:50071", "example.org:50071"):
        with pytest.raises(SystemExit):
            parse_args(["--province", "650000", "--control-listen", address])
        assert "--control-listen must be a loopback address" in capsys.readouterr().err
    with pytest.raises(ValueError, match="loopback only"):
        asyncio.run(start_stub(StubConfig(province=GANSU, control_listen="0.0.0.0:0")))
    assert parse_args(["--province", "650000", "--max-clock-skew", "30"]).max_clock_skew_s == 30.0
    for bad in ("0", "-5", "soon"):
        with pytest.raises(SystemExit):
            parse_args(["--province", "650000", "--max-clock-skew", bad])


def test_command_line_names_what_is_wrong_with_the_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('province = "530000"\n[[people]]\nid_number = "530102199001011234"\n')
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('province = "650000"\n')
    for argv, says in (
        (["--province", "530000"], "no packaged seed for province 530000 (packaged: 610000, 620000, 650000)"),
        (["--province", "530000", "--seed", str(tmp_path / "missing.toml")], "cannot read seed"),
        (["--province", "530000", "--seed", str(broken)], "is not a valid seed file"),
        (["--province", "530000", "--seed", str(wrong)], "is for province 650000, not 530000"),
    ):
        with pytest.raises(SystemExit) as stopped:
            parse_args(argv)
        assert stopped.value.code == 2
        assert says in capsys.readouterr().err
    empty = tmp_path / "yunnan.toml"
    empty.write_text('province = "530000"\n')
    assert parse_args(["--province", "530000", "--seed", str(empty)]).seed_path == empty
