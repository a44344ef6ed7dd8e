"""The tamper-evident record: signed checkpoints of the chain, and verifying the whole of it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from gateway.domain.audit import (
    CHECKPOINT_TYPE,
    AuditEntry,
    Checkpoint,
    VerifyReport,
    checkpoint_payload,
    verify_chain,
)
from gateway.domain.envelope import ALG_ED25519, GATEWAY, Envelope
from gateway.usecases.context import UseCaseContext
from gateway.usecases.ports import SignatureVerifier, UnitOfWork, UnitOfWorkFactory

BATCH = 5000


def checkpoint_audit(ctx: UseCaseContext) -> Checkpoint | None:
    """Sign the chain's size and head if it grew since the last checkpoint."""
    now = ctx.clock.now()
    with ctx.uow() as uow:
        size, head = uow.audit.head()
        if size == 0 or size == uow.audit.last_checkpoint_size():
            return None
        payload = checkpoint_payload(size, head, now)
        envelope = ctx.receipts.sign_checkpoint(payload)
        checkpoint = Checkpoint(size, head, now, payload, envelope.key_id, envelope.signature)
        uow.audit.add_checkpoint(checkpoint)
        uow.commit()
    return checkpoint


def _entries(uow: UnitOfWork, upto: int) -> Iterator[AuditEntry]:
    after = 0
    while batch := uow.audit.entries_after(after, BATCH):
        for entry in batch:
            if entry.seq > upto:  # appended after the head was read: the next verification covers it
                return
            yield entry
        after = batch[-1].seq


def verify_audit(uow_factory: UnitOfWorkFactory, gateway_keys: Mapping[str, bytes],
                 verify: SignatureVerifier) -> VerifyReport:
    """Recompute the whole chain and check every checkpoint against the gateway's public keys."""

    def signature_ok(checkpoint: Checkpoint) -> bool:
        key = gateway_keys.get(checkpoint.key_id)
        envelope = Envelope(checkpoint.payload, CHECKPOINT_TYPE, GATEWAY, checkpoint.key_id, ALG_ED25519,
                            checkpoint.signature)
        # The row's own figures must be the ones signed: a moved size or head is caught here too.
        return (key is not None and verify(envelope, key)
                and checkpoint.payload == checkpoint_payload(checkpoint.size, checkpoint.head, checkpoint.at))

    with uow_factory(read_only=True) as uow:
        # Checkpoints, then the head: a checkpoint never covers more than the head read after it, unless
        # entries were removed. What is appended while this runs is left to the next verification.
        checkpoints = uow.audit.checkpoints()
        size, head = uow.audit.head()
        return verify_chain(_entries(uow, size), checkpoints, size, head, signature_ok)
