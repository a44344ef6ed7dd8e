"""What a province signs for the gateway: message ids, headers, and one envelope builder per kind."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import timestamp_pb2

from protos.gongji.v1 import common_pb2, payload_types, relations_pb2, settlements_pb2, transfers_pb2
from province_stub.signing import GATEWAY_SIGNER, sign_envelope

# The version of the commitment letter (承诺书) the stub's givers accept.
LETTER_VERSION = "2024-01"
DEFAULT_CONSENT_SECONDS = 86400
_MAX_MESSAGE_ID = 64


def now_timestamp(offset_s: int = 0) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns() + offset_s * 1_000_000_000)
    return ts


def new_transfer_id(province: str) -> str:
    return f"{province}-{uuid.uuid4().hex}"


def new_binding_id(province: str) -> str:
    return f"{province}-b-{uuid.uuid4().hex}"


def new_message_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def header(
    message_id: str, sender: str, receiver: str, created_at: timestamp_pb2.Timestamp | None = None
) -> common_pb2.Header:
    return common_pb2.Header(
        message_id=message_id,
        sender=sender,
        receiver=receiver,
        created_at=created_at if created_at is not None else now_timestamp(),
    )


def build_instruction(
    sender: str,
    transfer_id: str,
    giver: common_pb2.PersonRef,
    receiver: common_pb2.PersonRef,
    receiver_province: str,
    amount_fen: int,
    *,
    binding_id: str = "",
    currency: str = "CNY",
    created_at: timestamp_pb2.Timestamp | None = None,
    expires_at: timestamp_pb2.Timestamp | None = None,
) -> transfers_pb2.TransferInstruction:
    instruction = transfers_pb2.TransferInstruction(
        header=header(transfer_id, sender, receiver_province, created_at),
        giver=giver,
        receiver=receiver,
        amount_fen=amount_fen,
        currency=currency,
        binding_id=binding_id,
    )
    if expires_at is not None:
        instruction.expires_at.CopyFrom(expires_at)
    return instruction


def build_instruction_envelope(
    signer: str,
    key_id: str,
    private_key: Ed25519PrivateKey,
    transfer_id: str,
    giver: common_pb2.PersonRef,
    receiver: common_pb2.PersonRef,
    receiver_province: str,
    amount_fen: int,
    *,
    binding_id: str = "",
    currency: str = "CNY",
    created_at: timestamp_pb2.Timestamp | None = None,
    expires_at: timestamp_pb2.Timestamp | None = None,
) -> common_pb2.SignedEnvelope:
    """A TransferInstruction from province `signer`, serialised once and signed."""
    instruction = build_instruction(
        signer,
        transfer_id,
        giver,
        receiver,
        receiver_province,
        amount_fen,
        binding_id=binding_id,
        currency=currency,
        created_at=created_at,
        expires_at=expires_at,
    )
    return sign_envelope(private_key, signer, key_id, payload_types.TRANSFER_INSTRUCTION,
                         instruction.SerializeToString())


def confirmation_message_id(transfer_id: str, decline: bool) -> str:
    """One id per (transfer, decision), so resending the same decision is an idempotent replay."""
    suffix = ":D" if decline else ":C"
    message_id = f"cfm:{transfer_id}{suffix}"
    if len(message_id) > _MAX_MESSAGE_ID:
        message_id = f"cfm:{hashlib.sha256(transfer_id.encode()).hexdigest()[:40]}{suffix}"
    return message_id


def acceptance_message_id(binding_id: str) -> str:
    """One id per binding: a second, different answer is a modified request the gateway refuses."""
    message_id = f"acc:{binding_id}"
    if len(message_id) > _MAX_MESSAGE_ID:
        message_id = f"acc:{hashlib.sha256(binding_id.encode()).hexdigest()[:40]}"
    return message_id


class ProvinceSigner:
    """Builds each kind of message as one province and signs it with that province's key."""

    def __init__(self, province: str, key_id: str, private_key: Ed25519PrivateKey,
                 now: Callable[[], float] | None = None) -> None:
        self.province = province
        self.key_id = key_id
        self._private_key = private_key
        # The stub's clock (tests move it with the gateway's): dates the settlement messages, which a test may
        # send a month on (a clearing month is closed after it has begun).
        self._now = now

    def _stamp(self) -> timestamp_pb2.Timestamp | None:
        if self._now is None:
            return None
        stamp = timestamp_pb2.Timestamp()
        stamp.FromNanoseconds(int(self._now() * 1_000_000_000))
        return stamp

    def sign(self, payload_type: str, payload: bytes) -> common_pb2.SignedEnvelope:
        return sign_envelope(self._private_key, self.province, self.key_id, payload_type, payload)

    # --- transfers (gongji.v1.Transfers) ---

    def instruction_envelope(
        self,
        transfer_id: str,
        giver: common_pb2.PersonRef,
        receiver: common_pb2.PersonRef,
        receiver_province: str,
        amount_fen: int,
        *,
        binding_id: str = "",
    ) -> common_pb2.SignedEnvelope:
        return build_instruction_envelope(
            self.province,
            self.key_id,
            self._private_key,
            transfer_id,
            giver,
            receiver,
            receiver_province,
            amount_fen,
            binding_id=binding_id,
        )

    def confirmation_envelope(
        self, transfer_id: str, decline: bool, decline_reason: str = ""
    ) -> common_pb2.SignedEnvelope:
        confirmation = transfers_pb2.TransferConfirmation(
            header=header(confirmation_message_id(transfer_id, decline), self.province, GATEWAY_SIGNER),
            transfer_id=transfer_id,
            decision=(
                transfers_pb2.CONFIRMATION_DECISION_DECLINED
                if decline
                else transfers_pb2.CONFIRMATION_DECISION_CREDITED
            ),
            decline_reason=decline_reason if decline else "",
        )
        return self.sign(payload_types.TRANSFER_CONFIRMATION, confirmation.SerializeToString())

    def transfer_query_envelope(self, transfer_id: str) -> common_pb2.SignedEnvelope:
        query = transfers_pb2.TransferQuery(
            header=header(f"qry-{uuid.uuid4().hex}", self.province, GATEWAY_SIGNER),
            transfer_id=transfer_id,
        )
        return self.sign(payload_types.TRANSFER_QUERY, query.SerializeToString())

    # --- bindings (gongji.v1.Relations) ---

    def proposal_envelope(
        self,
        binding_id: str,
        giver: common_pb2.PersonRef,
        receiver: common_pb2.PersonRef,
        receiver_province: str,
        relation_code: str,
        *,
        authorised_amount_fen: int = 0,
        consent_seconds: int = DEFAULT_CONSENT_SECONDS,
    ) -> common_pb2.SignedEnvelope:
        """A BindingProposal whose message_id is the binding id, addressed to the receiver's province."""
        now = now_timestamp()
        proposal = relations_pb2.BindingProposal(
            header=header(binding_id, self.province, receiver_province, now),
            giver=giver,
            receiver=receiver,
            relation_code=relation_code,
            commitment=relations_pb2.Commitment(letter_version=LETTER_VERSION, accepted_at=now),
            authorised_amount_fen=authorised_amount_fen,
            consent_by=now_timestamp(consent_seconds),
        )
        return self.sign(payload_types.BINDING_PROPOSAL, proposal.SerializeToString())

    def acceptance_envelope(
        self,
        binding_id: str,
        decision: relations_pb2.ConsentDecision.ValueType,
        attestation: relations_pb2.Attestation | None = None,
    ) -> common_pb2.SignedEnvelope:
        acceptance = relations_pb2.BindingAcceptance(
            header=header(acceptance_message_id(binding_id), self.province, GATEWAY_SIGNER),
            binding_id=binding_id,
            decision=decision,
        )
        if attestation is not None:
            acceptance.attestation.CopyFrom(attestation)
        return self.sign(payload_types.BINDING_ACCEPTANCE, acceptance.SerializeToString())

    def dissolution_envelope(self, message_id: str, binding_id: str, reason: str) -> common_pb2.SignedEnvelope:
        dissolution = relations_pb2.BindingDissolution(
            header=header(message_id, self.province, GATEWAY_SIGNER), binding_id=binding_id, reason=reason
        )
        return self.sign(payload_types.BINDING_DISSOLUTION, dissolution.SerializeToString())

    def member_change_envelope(
        self, message_id: str, person: common_pb2.PersonRef, kind: relations_pb2.MemberChangeKind.ValueType
    ) -> common_pb2.SignedEnvelope:
        change = relations_pb2.MemberChange(
            header=header(message_id, self.province, GATEWAY_SIGNER),
            person=person,
            kind=kind,
            effective_at=now_timestamp(),
        )
        return self.sign(payload_types.MEMBER_CHANGE, change.SerializeToString())

    def binding_query_envelope(self, binding_id: str) -> common_pb2.SignedEnvelope:
        query = relations_pb2.BindingQuery(
            header=header(new_message_id("qry"), self.province, GATEWAY_SIGNER), binding_id=binding_id
        )
        return self.sign(payload_types.BINDING_QUERY, query.SerializeToString())

    # --- settlement (gongji.v1.Settlements) ---

    def acknowledgement_envelope(self, window_id: str, figures_sha256: bytes) -> common_pb2.SignedEnvelope:
        # A fresh message id each time: a resend of these same bytes is a replay at the gateway.
        message_id = new_message_id("ack")
        acknowledgement = settlements_pb2.SettlementAcknowledgement(
            header=header(message_id, self.province, GATEWAY_SIGNER, self._stamp()), window_id=window_id,
            figures_sha256=figures_sha256,
        )
        return self.sign(payload_types.SETTLEMENT_ACKNOWLEDGEMENT, acknowledgement.SerializeToString())

    def settlement_query_envelope(self, window_id: str) -> common_pb2.SignedEnvelope:
        query = settlements_pb2.SettlementQuery(
            header=header(new_message_id("sq"), self.province, GATEWAY_SIGNER, self._stamp()), window_id=window_id
        )
        return self.sign(payload_types.SETTLEMENT_QUERY, query.SerializeToString())
