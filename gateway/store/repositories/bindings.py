"""Bindings (D6-D10): their states, attestations, sealed proposals, and the locks that order their people."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gateway.domain.bindings import Attestation, Binding, BindingState
from gateway.domain.eligibility import AttestationMethod
from gateway.domain.envelope import Envelope
from gateway.store.prepared import Cursor
from gateway.store.repositories.audit import SqlAuditLog
from gateway.store.sealing import Sealer
from gateway.store.statements import Statements
from gateway.store.tables import REASON_MAX


def _proposal_place(binding_id: str) -> bytes:
    return b"bindings.proposal_payload:" + binding_id.encode()


class SqlBindingRepository:
    def __init__(self, cursor: Cursor, statements: Statements, sealer: Sealer, audit: SqlAuditLog) -> None:
        self._cursor, self._s, self._sealer, self._audit = cursor, statements, sealer, audit
        self._used_later = False  # an add_used() waits for the commit: a read of a binding writes it first

    def write_queued(self) -> None:
        """Before a binding is read: if an add_used() waits for the commit, the writes queued for it (the cursor's,
        all of them, in order) are written now, so the read sees the amount."""
        if self._used_later:
            self._cursor.write_later()
            self._used_later = False

    def lock_people(self, *person_refs: bytes) -> None:
        # In one order, so two transactions locking the same two people never wait on each other.
        if self._s.lock_person is not None:
            for ref in sorted(set(person_refs)):
                self._cursor.first(self._s.lock_person, key=int.from_bytes(ref[:8], "big", signed=True))

    def add(self, binding: Binding, envelope: Envelope) -> bool:
        """Store a new binding; False (and nothing stored) if its id is taken, e.g. by another province's."""
        inserted = self._cursor.first(
            self._s.insert_binding, binding_id=binding.binding_id, state=binding.state.value,
            reason=binding.reason[:REASON_MAX], giver_province=binding.giver_province,
            receiver_province=binding.receiver_province, giver_ref=binding.giver_ref,
            receiver_ref=binding.receiver_ref, giver_id_masked=binding.giver_id_masked,
            receiver_id_masked=binding.receiver_id_masked, relation_code=binding.relation_code,
            authorised_amount_fen=binding.authorised_amount_fen, used_amount_fen=0,
            consent_by=binding.consent_by, created_at=binding.created_at, updated_at=binding.updated_at,
            attestation_method="", evidence_ref="", attested_at=None, proposal_sha256=binding.proposal_sha256,
            proposal_payload=self._sealer.seal(envelope.payload, _proposal_place(binding.binding_id)),
            proposal_signer=envelope.signer, proposal_key_id=envelope.key_id,
            proposal_alg=envelope.alg, proposal_signature=envelope.signature)
        if inserted is None:
            return False
        self._audit.record("binding", binding.binding_id, binding.state.value, binding.created_at,
                           f"{binding.giver_province}->{binding.receiver_province} relation={binding.relation_code} "
                           f"authorised_fen={binding.authorised_amount_fen} "
                           f"proposal_sha256={binding.proposal_sha256.hex()}")
        return True

    def from_row(self, raw: Sequence[Any]) -> Binding:
        """A binding from a row of get_binding's or lock_binding's columns."""
        v = dict(zip(self._s.get_binding.columns, raw, strict=True))
        return Binding(
            binding_id=v["binding_id"], state=BindingState(v["state"]), giver_province=v["giver_province"],
            receiver_province=v["receiver_province"], giver_id_masked=v["giver_id_masked"],
            receiver_id_masked=v["receiver_id_masked"], relation_code=v["relation_code"],
            authorised_amount_fen=v["authorised_amount_fen"],
            consent_by=v["consent_by"], created_at=v["created_at"], updated_at=v["updated_at"],
            proposal_sha256=bytes(v["proposal_sha256"]), reason=v["reason"],
            attestation_method=AttestationMethod(v["attestation_method"]) if v["attestation_method"] else None,
            evidence_ref=v["evidence_ref"], attested_at=v["attested_at"], used_amount_fen=v["used_amount_fen"],
            giver_ref=bytes(v["giver_ref"]),
            receiver_ref=bytes(v["receiver_ref"]))

    def get(self, binding_id: str, lock: bool = False) -> Binding | None:
        """The binding; with `lock`, no other transaction changes it until this one ends."""
        self.write_queued()
        raw = self._cursor.first(self._s.lock_binding if lock else self._s.get_binding, w_id=binding_id)
        return None if raw is None else self.from_row(raw)

    def exists(self, binding_id: str) -> bool:
        return self._cursor.first(self._s.binding_exists, w_id=binding_id) is not None

    def proposal_envelope(self, binding_id: str, payload_type: str) -> Envelope | None:
        """The giver province's signed proposal as it came, of the type the caller stored it as."""
        raw = self._cursor.first(self._s.proposal, w_id=binding_id)
        if raw is None:
            return None
        sealed, signer, key_id, alg, signature = raw
        payload = self._sealer.open(bytes(sealed), _proposal_place(binding_id))
        return Envelope(payload, payload_type, signer, key_id, alg, bytes(signature))

    def change_state(self, binding_id: str, from_states: Sequence[BindingState], to: BindingState, reason: str,
                     at: datetime) -> bool:
        for state in from_states:
            if self._cursor.run(self._s.change_binding_state, w_id=binding_id, w_from=state.value, state=to.value,
                                reason=reason[:REASON_MAX], updated_at=at) == 1:
                self._audit.record("binding", binding_id, to.value, at, reason[:REASON_MAX])
                return True
        return False

    def add_used(self, binding_id: str, amount_fen: int) -> None:
        """Add `amount_fen` (negative: take it off) to what the binding has used of its authorised amount. Sent with
        the commit (no round trip of its own): the caller has the row locked (a submission) or changes it by this
        alone (a transfer that fails), and the binding's reads here write it first."""
        self._cursor.later(self._s.add_used, w_id=binding_id, amount=amount_fen)
        self._used_later = True

    def record_attestation(self, binding_id: str, attestation: Attestation) -> None:
        self._cursor.run(self._s.attest_binding, w_id=binding_id, attestation_method=attestation.method.value,
                         evidence_ref=attestation.evidence_ref[:128], attested_at=attestation.attested_at)
        self._audit.record("binding", binding_id, "ATTESTED", attestation.attested_at,
                           f"method={attestation.method.value} evidence_ref={attestation.evidence_ref[:128]}")

    def of_person(self, person_ref: bytes) -> list[Binding]:
        self.write_queued()
        return [self.from_row(raw) for raw in self._cursor.all(self._s.bindings_of_person, ref=person_ref)]

    def expired_proposals(self, now: datetime, limit: int) -> list[str]:
        return [row[0] for row in self._cursor.all(self._s.expired_proposals, now=now, limit=limit)]

    def page(self, province: str, states: Sequence[BindingState], before: tuple[datetime, str] | None,
             limit: int) -> list[Binding]:
        """Bindings newest first (created_at, then binding_id) from just before `before`, in `states` (any if
        none) and with `province` on either side (any if empty): one index range per state and side, merged."""
        self.write_queued()
        sides = ("giver", "receiver") if province else ("",)
        found: dict[str, Binding] = {}
        for state in states or tuple(BindingState):
            for side in sides:
                position = {"at": before[0], "w_id": before[1]} if before is not None else {}
                for raw in self._cursor.all(self._s.binding_page(side, before is not None), state=state.value,
                                            limit=limit, **({"province": province} if side else {}), **position):
                    binding = self.from_row(raw)
                    found[binding.binding_id] = binding
        return sorted(found.values(), key=lambda b: (b.created_at, b.binding_id), reverse=True)[:limit]
