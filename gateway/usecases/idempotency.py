"""Idempotent execution on (sender, message_id) with the stored answer replayed (D15, api.md)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime

from gateway.domain import errors
from gateway.domain.errors import FailedPrecondition, GongjiError, ModifiedRequest
from gateway.domain.records import RequestOutcome, StoredRequest
from gateway.usecases.ports import UnitOfWork

# Refusals caused by state are stored and replayed like any answer; a retry never changes the outcome.
STORED_REFUSALS: tuple[type[GongjiError], ...] = (FailedPrecondition, errors.AlreadyExists)
_REFUSAL_KINDS: dict[str, type[GongjiError]] = {cls.__name__: cls for cls in (FailedPrecondition, errors.AlreadyExists)}


def payload_digest(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def _replay(stored: StoredRequest, payload_sha256: bytes) -> bytes:
    if stored.payload_sha256 != payload_sha256:
        raise ModifiedRequest("this message_id was used before with different content; use a new message_id",
                              field="header.message_id")
    if stored.outcome is RequestOutcome.REJECTED:
        error_class = _REFUSAL_KINDS.get(stored.error_kind or "", FailedPrecondition)
        error = error_class(stored.error_message or "refused", reason=stored.error_reason, field=stored.error_field)
        error.replay = True
        raise error
    assert stored.response is not None, "a committed request always has its answer"
    return stored.response


def answered_before(uow: UnitOfWork, sender: str, message_id: str, payload_type: str, payload_sha256: bytes) -> bool:
    """Whether these very bytes (same key, type and SHA-256) were answered already: a resend, which
    executes nothing, so its stored answer may be given however late it comes (D15)."""
    stored = uow.requests.get(sender, message_id)
    return stored is not None and (stored.payload_type, stored.payload_sha256) == (payload_type, payload_sha256)


def replay_if_seen(uow: UnitOfWork, sender: str, message_id: str, payload_sha256: bytes) -> bytes | None:
    """The stored answer to a resend (raising a stored refusal or MODIFIED_REQUEST), or None if unseen."""
    stored = uow.requests.get(sender, message_id)
    return None if stored is None else _replay(stored, payload_sha256)


def run_once(
    uow: UnitOfWork,
    sender: str,
    message_id: str,
    payload_type: str,
    payload_sha256: bytes,
    now: datetime,
    action: Callable[[], bytes],
) -> tuple[bytes, bool]:
    """Run `action` once per key inside `uow` and commit; returns (answer, replayed)."""
    # Claimed first: a new message, nearly every call, costs one statement rather than a look-up and the claim.
    if not uow.requests.claim(sender, message_id, payload_type, payload_sha256, now):
        # Sent before, and committed (the unique key waits for a transaction still holding it): the stored answer.
        stored = uow.requests.get(sender, message_id)
        assert stored is not None
        return _replay(stored, payload_sha256), True
    try:
        answer = action()
    except STORED_REFUSALS as refusal:
        uow.requests.record_rejection(sender, message_id, type(refusal).__name__, refusal.reason, refusal.field,
                                      refusal.message)
        uow.commit()
        raise
    uow.requests.record_response(sender, message_id, answer)
    uow.commit()
    return answer, False
