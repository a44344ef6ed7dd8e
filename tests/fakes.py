"""The fakes ring: the use cases on the real SQL store in an in-memory SQLite database, no server, no sockets."""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import StaticPool

from gateway.api.convert import (
    decode_binding_acceptance,
    decode_binding_proposal,
    decode_confirmation,
    decode_instruction,
)
from gateway.api.receipts import SignedReceiptIssuer
from gateway.core import STORED_PAYLOAD_TYPES
from gateway.domain.clock import BEIJING
from gateway.domain.eligibility import MemberStatus
from gateway.domain.envelope import GATEWAY, Envelope
from gateway.domain.outbox import DeliverTransfer
from gateway.domain.provinces import Policy, Province, ProvinceKey
from gateway.domain.transfers import PersonRef, Transfer, TransferState
from gateway.security.encryption import FieldCipher
from gateway.security.hashing import HmacPersonHasher
from gateway.security.keys import public_bytes
from gateway.security.signing import EnvelopeSigner, verify_signature
from gateway.store.engine import create_schema
from gateway.store.repositories.routing import RoutingCache
from gateway.store.unit_of_work import SqlStore
from gateway.usecases.bindings import BindingAnswer, accept_binding, propose_binding
from gateway.usecases.context import UseCaseContext
from gateway.usecases.outbox import claim_outbox_work, record_outbox_results, release_unsent, sweep_deadlines
from gateway.usecases.outbox_ports import Backoff, SendResult
from gateway.usecases.provinces import register_province
from gateway.usecases.transfers import ReceiptAnswer, confirm_transfer, submit_transfer
from gateway.wire import timestamp
from protos.gongji.v1 import common_pb2, relations_pb2, transfers_pb2

T = TypeVar("T")

XINJIANG, GANSU = "650000", "620000"
GIVER = PersonRef("650502199001011230", "650500")  # Hami, employee insurance (310), as the stub's seeds
MOTHER = PersonRef("620102196505120026", "620100")  # Lanzhou, resident insurance (390): his mother
# 10:00 in Beijing, outside the blackout (22:00-06:00), with the day's return hour (06:00) long past.
MORNING = datetime(2026, 5, 4, 10, 0, tzinfo=BEIJING).astimezone(UTC)
# No blackout and a daily limit out of the way: a test of D12 sets the value it is about.
OPEN_POLICY = Policy(blackout_start_minute=0, blackout_end_minute=0, daily_transfer_limit=1000)


class FixedClock:
    """Time that moves only when told to."""

    def __init__(self, at: datetime = MORNING) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@dataclass
class Members:
    """The provinces' CheckMember, from a table: everyone asked about is insured and NORMAL unless told."""

    statuses: dict[str, MemberStatus] = field(default_factory=lambda: {
        GIVER.id_number: MemberStatus("310", True, False), MOTHER.id_number: MemberStatus("390", True, False)})

    async def check_member(self, province: Province, person: PersonRef) -> MemberStatus | None:
        return self.statuses.get(person.id_number, MemberStatus("390", True, False))


def _memory_engine() -> Engine:
    """One in-memory SQLite database on one connection, its transactions begun by the unit of work itself, as
    make_engine's files are (no WAL nor busy timeout: no other process can see it)."""
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False},
                           pool_reset_on_return=None)

    @event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    return engine


@functools.cache
def _template() -> SqlStore:
    """The schema made once, and the statements compiled once (12 ms each): every ring copies them."""
    engine = _memory_engine()
    create_schema(engine)
    return SqlStore(engine, FieldCipher.generate())


def memory_store() -> SqlStore:
    """A fresh database holding the empty schema (copied from the template in well under a millisecond)."""
    template = _template()
    engine = _memory_engine()
    target = engine.raw_connection()
    try:
        source = template.engine.raw_connection()
        source.driver_connection.backup(target.driver_connection)  # type: ignore[union-attr]
        source.close()
    finally:
        target.close()
    # The SqlStore of this database: the template's compiled statements, its own engine, cache and sealer.
    store = copy.copy(template)
    store.engine, store.routing, store.sealer = engine, RoutingCache(), FieldCipher.generate()
    return store


def fake_context(clock: FixedClock | None = None, members: Members | None = None,
                 store: SqlStore | None = None) -> UseCaseContext:
    """The use cases' context on a fresh in-memory database (or `store`): a clock that moves when told, the gateway's
    receipts signed with a new Ed25519 key, keyed hashes of ID numbers, real signature checks, CheckMember from a
    table."""
    return UseCaseContext(
        uow=(store or memory_store()).unit_of_work, clock=clock or FixedClock(),
        receipts=SignedReceiptIssuer(EnvelopeSigner(GATEWAY, "gateway-k1", Ed25519PrivateKey.generate())),
        hasher=HmacPersonHasher(b"fakes-ring-id-hash-secret-32byte"), verify=verify_signature,
        members=members or Members(), stored_types=STORED_PAYLOAD_TYPES)


async def _inline(use_case: Callable[..., T], *args: Any) -> T:
    return use_case(*args)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class Ring:
    """Two registered provinces (Xinjiang gives, Gansu receives) and the use cases run directly on them.

    Messages are built from the protos and signed by the provinces' own keys, decoded by the API's decoders, and
    verified with the real signature check: what a call through the server would hand the use case.
    """

    def __init__(self, policy: Policy = OPEN_POLICY, clock: FixedClock | None = None,
                 store: SqlStore | None = None) -> None:
        """On a fresh in-memory database, or on `store` (a real one: its provinces are registered once)."""
        self.clock = clock or FixedClock()
        self.members = Members()
        self.ctx = fake_context(self.clock, self.members, store)
        self.signers: dict[str, EnvelopeSigner] = {}
        self._ids = itertools.count(1)
        for code, name in ((XINJIANG, "新疆"), (GANSU, "甘肃")):
            self.register(code, name, policy)

    def register(self, code: str, name: str, policy: Policy) -> None:
        key = Ed25519PrivateKey.generate()
        self.signers[code] = EnvelopeSigner(code, f"{code}-k1", key)
        register_province(self.ctx, Province(code, name, f"127.0.0.1:{code[:2]}01", keys=(
            ProvinceKey(f"{code}-k1", public_bytes(key)),), policy=policy), "operator-test")

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):06d}"

    # -- messages, signed as a province's platform would ---------------------------------------------------
    def header(self, message_id: str, sender: str, receiver: str) -> common_pb2.Header:
        return common_pb2.Header(message_id=message_id, sender=sender, receiver=receiver,
                                 created_at=timestamp(self.clock.now()))

    def sign(self, message: Message, signer: str) -> Envelope:
        return self.signers[signer].sign(message.DESCRIPTOR.full_name, message.SerializeToString())

    def instruction(self, amount_fen: int, binding_id: str, transfer_id: str | None = None,
                    expires_in: timedelta | None = None) -> Envelope:
        message = transfers_pb2.TransferInstruction(
            header=self.header(transfer_id or self.new_id("tr"), XINJIANG, GANSU),
            giver=common_pb2.PersonRef(id_number=GIVER.id_number, pooling_area=GIVER.pooling_area),
            receiver=common_pb2.PersonRef(id_number=MOTHER.id_number, pooling_area=MOTHER.pooling_area),
            amount_fen=amount_fen, currency="CNY", binding_id=binding_id)
        if expires_in is not None:
            message.expires_at.CopyFrom(timestamp(self.clock.now() + expires_in))
        return self.sign(message, XINJIANG)

    def confirmation(self, transfer_id: str, decline: bool = False) -> Envelope:
        return self.sign(transfers_pb2.TransferConfirmation(
            header=self.header(self.new_id("cf"), GANSU, GATEWAY), transfer_id=transfer_id,
            decision=(transfers_pb2.CONFIRMATION_DECISION_DECLINED if decline
                      else transfers_pb2.CONFIRMATION_DECISION_CREDITED),
            decline_reason="RECEIVER_DECLINED" if decline else ""), GANSU)

    def proposal(self, authorised_amount_fen: int, binding_id: str | None = None) -> Envelope:
        now = self.clock.now()
        return self.sign(relations_pb2.BindingProposal(
            header=self.header(binding_id or self.new_id("b"), XINJIANG, GANSU),
            giver=common_pb2.PersonRef(id_number=GIVER.id_number, pooling_area=GIVER.pooling_area),
            receiver=common_pb2.PersonRef(id_number=MOTHER.id_number, pooling_area=MOTHER.pooling_area),
            relation_code="52",  # mother
            commitment=relations_pb2.Commitment(letter_version="2024-01", accepted_at=timestamp(now)),
            authorised_amount_fen=authorised_amount_fen, consent_by=timestamp(now + timedelta(hours=1))), XINJIANG)

    def acceptance(self, binding_id: str) -> Envelope:
        return self.sign(relations_pb2.BindingAcceptance(
            header=self.header(self.new_id("acc"), GANSU, GATEWAY), binding_id=binding_id,
            decision=relations_pb2.CONSENT_DECISION_ACCEPT,
            attestation=relations_pb2.Attestation(method=relations_pb2.ATTESTATION_METHOD_FACE,
                                                  evidence_ref=self.new_id("ev"),
                                                  attested_at=timestamp(self.clock.now()))), GANSU)

    # -- the use cases, as the servicers and the outbox loop run them ---------------------------------------
    def bind(self, authorised_amount_fen: int = 0) -> str:
        """ProposeBinding then AcceptBinding: an ACTIVE binding of the giver and his mother."""
        proposal = self.proposal(authorised_amount_fen)
        _run(propose_binding(self.ctx, _inline, proposal, None, decode_binding_proposal))
        binding_id = decode_binding_proposal(proposal.payload).header.message_id
        self.accept(binding_id)
        return binding_id

    def accept(self, binding_id: str) -> BindingAnswer:
        return accept_binding(self.ctx, self.acceptance(binding_id), None, decode_binding_acceptance,
                              decode_binding_proposal)

    def submit(self, amount_fen: int, binding_id: str, expires_in: timedelta | None = None) -> str:
        """SubmitTransfer; returns the transfer's id (a refusal raises the domain error)."""
        answer: ReceiptAnswer = submit_transfer(self.ctx, self.instruction(amount_fen, binding_id,
                                                                           expires_in=expires_in),
                                                None, decode_instruction)
        return answer.subject_id

    def confirm(self, transfer_id: str, decline: bool = False) -> ReceiptAnswer:
        return confirm_transfer(self.ctx, self.confirmation(transfer_id, decline), None, decode_confirmation)

    def answer_delivery(self, transfer_id: str, rejected: bool = False) -> None:
        """The receiver's province acknowledges the delivery of `transfer_id`, or rejects it. The notifications
        that were due are acknowledged too; other deliveries stay due, unanswered."""
        work = claim_outbox_work(self.ctx, 1000, timedelta(seconds=30))
        deliveries = [item for item in work if isinstance(item.message.content, DeliverTransfer)]
        mine = [item for item in deliveries if item.message.subject_id == transfer_id]
        assert len(mine) == 1, f"no delivery of {transfer_id} is due"
        release_unsent(self.ctx, [item.message.id for item in deliveries if item not in mine])
        answer = SendResult(acknowledged=True, rejected=rejected, reason="REJECTED_BY_RECEIVER" if rejected else "")
        notified = [(item, SendResult(acknowledged=True)) for item in work if item not in deliveries]
        record_outbox_results(self.ctx, [(mine[0], answer), *notified], Backoff())

    def sweep(self) -> int:
        return sweep_deadlines(self.ctx)

    # -- what the store holds ----------------------------------------------------------------------------
    def transfer(self, transfer_id: str) -> Transfer:
        with self.ctx.uow() as uow:
            transfer = uow.transfers.get(transfer_id)
        assert transfer is not None
        return transfer

    def used_amount(self, binding_id: str) -> int:
        with self.ctx.uow() as uow:
            binding = uow.bindings.get(binding_id)
        assert binding is not None
        return binding.used_amount_fen

    def states(self, transfer_ids: Iterable[str]) -> dict[str, TransferState]:
        with self.ctx.uow() as uow:
            found = {transfer_id: uow.transfers.get(transfer_id) for transfer_id in transfer_ids}
        return {transfer_id: transfer.state for transfer_id, transfer in found.items() if transfer is not None}

    def state(self, transfer_id: str) -> TransferState:
        return self.transfer(transfer_id).state
