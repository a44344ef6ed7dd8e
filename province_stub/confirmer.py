"""Confirms or declines delivered transfers to the gateway, automatically or on request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from protos.gongji.v1 import common_pb2
from province_stub.answers import RESEND_CODES, ConfirmResult
from province_stub.client import GatewayClient
from province_stub.messages import confirmation_message_id
from province_stub.state import Behaviour, ConfirmMode

logger = logging.getLogger(__name__)

DECLINE_REASON = "RECEIVER_DECLINED"


class Confirmer:
    """Sends TransferConfirmations; each (transfer, decision) is signed once and resent byte for byte.

    An automatic confirmation the gateway cannot take yet (UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED:
    a gateway restarting, say) is resent with backoff (doubling from first_backoff_s, at most
    max_backoff_s apart) until the delivery's confirm_by has passed — after that the gateway returns
    the transfer anyway — or, for a delivery that named no deadline, for `attempts` attempts.
    """

    def __init__(self, client: GatewayClient, *, attempts: int = 5, first_backoff_s: float = 0.1,
                 max_backoff_s: float = 2.0, now: Callable[[], float] = time.time) -> None:
        self._client = client
        self._attempts = attempts
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._now = now
        self._envelopes: dict[str, common_pb2.SignedEnvelope] = {}
        self._auto_scheduled: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, transfer_id: str, behaviour: Behaviour, confirm_by: float | None = None) -> None:
        """Start the automatic confirmation the behaviour asks for, once per transfer."""
        if behaviour.confirm_mode is ConfirmMode.NEVER or transfer_id in self._auto_scheduled:
            return
        self._auto_scheduled.add(transfer_id)
        delay_s = behaviour.confirm_delay_ms / 1000 if behaviour.confirm_mode is ConfirmMode.DELAY else 0.0
        decline = behaviour.confirm_mode is ConfirmMode.DECLINE
        task = asyncio.get_running_loop().create_task(self._auto_confirm(transfer_id, decline, delay_s, confirm_by))
        # The loop keeps only weak references to tasks; hold them until they finish.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def confirm(self, transfer_id: str, decline: bool) -> ConfirmResult:
        """One attempt, so a caller sees exactly what the gateway answered."""
        envelope = self._envelope(transfer_id, decline)
        return await self._client.confirm(envelope, transfer_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _envelope(self, transfer_id: str, decline: bool) -> common_pb2.SignedEnvelope:
        message_id = confirmation_message_id(transfer_id, decline)
        envelope = self._envelopes.get(message_id)
        if envelope is None:
            envelope = self._client.confirmation_envelope(
                transfer_id, decline, DECLINE_REASON if decline else ""
            )
            self._envelopes[message_id] = envelope
        return envelope

    async def _auto_confirm(self, transfer_id: str, decline: bool, delay_s: float, confirm_by: float | None) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        backoff_s = self._first_backoff_s
        attempt = 0
        while True:
            attempt += 1
            result = await self.confirm(transfer_id, decline)
            if result.status.code not in RESEND_CODES:
                logger.debug(
                    "confirmation transfer=%s decline=%s answered %s %s",
                    transfer_id,
                    decline,
                    result.status.code,
                    result.status.reason,
                )
                return
            if (self._now() + backoff_s >= confirm_by) if confirm_by is not None else attempt >= self._attempts:
                break
            await asyncio.sleep(backoff_s)
            backoff_s = min(2 * backoff_s, self._max_backoff_s)
        logger.warning(
            "confirmation transfer=%s gave up after %d attempts (%s): %s",
            transfer_id,
            attempt,
            "its confirm_by has passed" if confirm_by is not None else "no confirm_by given",
            result.status.code,
        )
