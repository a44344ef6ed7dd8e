"""The stub province on its own: a real grpc.aio channel, gateway messages signed by the test."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
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

from protos.gongji.v1 import common_pb2, province_pb2, province_pb2_grpc, transfers_pb2, transfers_pb2_grpc
from protos.stub.v1 import control_pb2, control_pb2_grpc
from province_stub import Behaviour, ConfirmMode, StubConfig, start_stub
from province_stub.__main__ import parse_args

SEEDS = Path(__file__).resolve().parents[2] / "province_stub" / "seeds"
GANSU = "620000"
XINJIANG = "650000"
MOTHER = "620102196505120026"  # seeded in Gansu, NORMAL
SUSPENDED = "620102199207070511"  # seeded in Gansu, settlement suspended
GIVER = "650502199001011230"  # seeded in Xinjiang
NOBODY = "620102198001010012"  # not seeded anywhere
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
    """Keys in a temporary directory: the gateway's and the Xinjiang giver province's."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        keys_dir.mkdir(parents=True, exist_ok=True)
        self.gateway_key = Ed25519PrivateKey.generate()
        self.giver_key = Ed25519PrivateKey.generate()
        self.counter = 0

    def publish_gateway_key(self) -> None:
        (self.keys_dir / "gateway.pub").write_text(_raw_public(self.gateway_key).hex() + "\n")

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

    def member_request(self, id_number: str) -> Any:
        query = province_pb2.MemberQuery(
            header=header(self.fresh_id("mq"), "gateway", GANSU),
            person=common_pb2.PersonRef(id_number=id_number),
        )
        return province_pb2.CheckMemberRequest(
            query=self.gateway_sign("gongji.v1.MemberQuery", query.SerializeToString())
        )


Scenario = Callable[[Any, Any, World], Awaitable[None]]


def run_stub(tmp_path: Path, scenario: Scenario, *, publish: bool = True) -> None:
    """Start a Gansu stub in-process with no gateway behind it, run the scenario, stop it."""
    world = World(tmp_path / "keys")
    asyncio.run(_with_stub(world, "127.0.0.1:1", scenario, publish=publish))


async def _with_stub(world: World, gateway: str, scenario: Scenario, *, publish: bool = True) -> None:
    if publish:
        world.publish_gateway_key()
    config = StubConfig(
        province=GANSU, keys_dir=world.keys_dir, gateway=gateway, behaviour=NEVER, gateway_deadline_s=2.0
    )
    stub = await start_stub(config)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stub.port}") as channel:
            inbox = province_pb2_grpc.ProvinceInboxStub(channel)
            control = control_pb2_grpc.StubControlStub(channel)
            await asyncio.wait_for(scenario(inbox, control, world), timeout=8)
    finally:
        await stub.stop(0)


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


def test_gateway_key_is_read_when_it_appears(tmp_path: Path) -> None:
    async def scenario(inbox: Any, control: Any, world: World) -> None:
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


# --- the client side, against a fake gateway ---


class FakeGateway(transfers_pb2_grpc.TransfersServicer):
    """Signs receipts like the gateway; fails the first confirmation to exercise the retry."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.confirmations: list[Any] = []
        self.submissions: list[Any] = []

    def _receipt(self, envelope: Any, state: str) -> Any:
        receipt = common_pb2.Receipt(
            request_sha256=hashlib.sha256(envelope.payload).digest(),
            request_payload_type=envelope.payload_type,
            state=state,
        )
        return self.world.gateway_sign("gongji.v1.Receipt", receipt.SerializeToString())

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
        if len(self.confirmations) == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return transfers_pb2.ConfirmTransferResponse(
            receipt=self._receipt(request.confirmation, "TRANSFER_STATE_COMMITTED"),
            state=transfers_pb2.TRANSFER_STATE_COMMITTED,
        )

    async def GetTransfer(self, request: Any, context: Any) -> Any:
        info = error_details_pb2.ErrorInfo(reason="TRANSFER_NOT_FOUND", domain="gongji.v1")
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="no such transfer")
        status.details.append(detail)
        await context.abort(
            grpc.StatusCode.NOT_FOUND, "no such transfer", rpc_status.to_status(status).trailing_metadata
        )


def test_client_side_against_a_fake_gateway(tmp_path: Path) -> None:
    world = World(tmp_path / "keys")
    fake = FakeGateway(world)

    async def main() -> None:
        gateway = grpc.aio.server()
        transfers_pb2_grpc.add_TransfersServicer_to_server(fake, gateway)
        gateway_port = gateway.add_insecure_port("127.0.0.1:0")
        await gateway.start()

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
            trailer = dict(failed.value.trailing_metadata() or ())
            status = status_pb2.Status.FromString(trailer["grpc-status-details-bin"])
            info = error_details_pb2.ErrorInfo()
            status.details[0].Unpack(info)
            assert info.reason == "TRANSFER_NOT_FOUND"

        try:
            await _with_stub(world, f"127.0.0.1:{gateway_port}", scenario)
        finally:
            await gateway.stop(0)

    asyncio.run(main())


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
