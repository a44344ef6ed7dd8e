"""Answers consent requests for bindings (AcceptBinding), automatically or on request; the D6 age rule."""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
from collections.abc import Callable

from protos.gongji.v1 import common_pb2, relations_pb2
from province_stub.answers import RESEND_CODES, CallResult
from province_stub.client import GatewayClient
from province_stub.messages import acceptance_message_id, now_timestamp
from province_stub.people import mask_id
from province_stub.state import Behaviour, ConsentMode, ConsentRequestRecord

logger = logging.getLogger(__name__)

# China has kept UTC+8 without daylight saving since 1991, so no time-zone database is needed.
BEIJING = datetime.timezone(datetime.timedelta(hours=8), "Asia/Shanghai")
FACE_AGE = 16

_FACE = relations_pb2.ATTESTATION_METHOD_FACE
_GUARDIAN = relations_pb2.ATTESTATION_METHOD_GUARDIAN_DOCUMENT
_ACCEPT = relations_pb2.CONSENT_DECISION_ACCEPT
_REFUSE = relations_pb2.CONSENT_DECISION_REFUSE

Today = Callable[[], datetime.date]
# (decision, attestation method or None for a refusal)
Answer = tuple[relations_pb2.ConsentDecision.ValueType, relations_pb2.AttestationMethod.ValueType | None]


def beijing_today() -> datetime.date:
    return datetime.datetime.now(BEIJING).date()


def birth_date(id_number: str) -> datetime.date | None:
    """Digits 7-14 of an 18-character ID number as YYYYMMDD, or None if they are not a date."""
    digits = id_number[6:14]
    if len(id_number) != 18 or not digits.isdigit():
        return None
    try:
        return datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def age_on(born: datetime.date, day: datetime.date) -> int:
    """Full years on `day`. Comparing (month, day) pairs makes a 29 February birthday count on
    1 March in a common year, as D6 says."""
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def attestation_for_age(id_number: str, today: datetime.date) -> relations_pb2.AttestationMethod.ValueType:
    """FACE at 16 or over, else GUARDIAN_DOCUMENT (D6)."""
    born = birth_date(id_number)
    # An unreadable birth date gets the stricter requirement; the gateway judges the number itself.
    if born is None or age_on(born, today) >= FACE_AGE:
        return _FACE
    return _GUARDIAN


def answer_for(mode: ConsentMode, receiver_id_number: str, today: datetime.date) -> Answer | None:
    """What to send for a consent mode; None for NEVER."""
    if mode is ConsentMode.NEVER:
        return None
    if mode is ConsentMode.REFUSE:
        return _REFUSE, None
    if mode is ConsentMode.FACE:
        return _ACCEPT, _FACE
    if mode is ConsentMode.GUARDIAN:
        return _ACCEPT, _GUARDIAN
    return _ACCEPT, attestation_for_age(receiver_id_number, today)


def _attestation(method: relations_pb2.AttestationMethod.ValueType) -> relations_pb2.Attestation:
    prefix = "FACE" if method == _FACE else "HUKOU"
    return relations_pb2.Attestation(
        method=method,
        # The province's own evidence record (never a face image, D7); random, like a real reference.
        evidence_ref=f"{prefix}-{secrets.token_hex(8).upper()}",
        attested_at=now_timestamp(),
    )


class Consenter:
    """Sends BindingAcceptances; each (binding, answer) is signed once and resent byte for byte."""

    def __init__(
        self,
        client: GatewayClient,
        *,
        attempts: int = 5,
        first_backoff_s: float = 0.1,
        today: Today = beijing_today,
    ) -> None:
        self._client = client
        self._attempts = attempts
        self._first_backoff_s = first_backoff_s
        self._today = today
        self._envelopes: dict[tuple[str, Answer], common_pb2.SignedEnvelope] = {}
        self._auto_scheduled: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, request: ConsentRequestRecord, behaviour: Behaviour) -> None:
        """Start the automatic answer the behaviour asks for, once per binding."""
        answer = answer_for(behaviour.consent_mode, request.receiver_id_number, self._today())
        if answer is None or request.binding_id in self._auto_scheduled:
            return
        self._auto_scheduled.add(request.binding_id)
        task = asyncio.get_running_loop().create_task(self._auto_answer(request, answer))
        # The loop keeps only weak references to tasks; hold them until they finish.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer(self, request: ConsentRequestRecord, mode: ConsentMode) -> CallResult:
        """One attempt, so a caller sees exactly what the gateway answered. Raises ValueError for NEVER."""
        answer = answer_for(mode, request.receiver_id_number, self._today())
        if answer is None:
            raise ValueError("NEVER is not an answer")
        return await self._send(request.binding_id, answer)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _send(self, binding_id: str, answer: Answer) -> CallResult:
        key = (binding_id, answer)
        envelope = self._envelopes.get(key)
        if envelope is None:
            decision, method = answer
            envelope = self._client.acceptance_envelope(
                binding_id, decision, _attestation(method) if method is not None else None
            )
            self._envelopes[key] = envelope
        return await self._client.accept_binding(envelope, binding_id)

    async def _auto_answer(self, request: ConsentRequestRecord, answer: Answer) -> None:
        backoff_s = self._first_backoff_s
        result: CallResult | None = None
        for attempt in range(1, self._attempts + 1):
            result = await self._send(request.binding_id, answer)
            if result.status.code not in RESEND_CODES:
                logger.debug(
                    "consent %s binding=%s receiver=%s answered %s %s state=%s",
                    acceptance_message_id(request.binding_id),
                    request.binding_id,
                    mask_id(request.receiver_id_number),
                    result.status.code,
                    result.status.reason,
                    result.state,
                )
                return
            if attempt < self._attempts:
                await asyncio.sleep(backoff_s)
                backoff_s *= 2
        logger.warning(
            "consent answer binding=%s gave up after %d attempts: %s",
            request.binding_id,
            self._attempts,
            result.status.code if result is not None else "",
        )
