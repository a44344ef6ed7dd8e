"""Acknowledges settlement figures to the gateway, automatically or on request."""

from __future__ import annotations

import asyncio
import hashlib
import logging

from protos.gongji.v1 import common_pb2
from province_stub.answers import RESEND_CODES, CallResult
from province_stub.client import GatewayClient
from province_stub.state import SettlementRecord

logger = logging.getLogger(__name__)



class Acknowledger:
    """Signs an acknowledgement of the figures as received and sends it, resending the same bytes on failure."""

    def __init__(self, client: GatewayClient, *, attempts: int = 5, first_backoff_s: float = 0.1) -> None:
        self._client = client
        self._attempts = attempts
        self._first_backoff_s = first_backoff_s
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, record: SettlementRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._auto(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def acknowledge(self, record: SettlementRecord, wrong_digest: bool = False) -> CallResult:
        """One attempt with a freshly signed acknowledgement, so a caller sees what the gateway answered."""
        return await self._send(self._envelope(record, wrong_digest), record)

    def _envelope(self, record: SettlementRecord, wrong_digest: bool) -> common_pb2.SignedEnvelope:
        digest = hashlib.sha256(b"not the figures").digest() if wrong_digest else record.figures_sha256
        return self._client.acknowledgement_envelope(record.window_id, digest)

    async def _send(self, envelope: common_pb2.SignedEnvelope, record: SettlementRecord) -> CallResult:
        result = await self._client.acknowledge_settlement(envelope, record.window_id)
        if result.status.ok:
            record.acknowledged_state = result.state
        return result

    async def _auto(self, record: SettlementRecord) -> None:
        envelope = self._envelope(record, wrong_digest=False)
        backoff_s = self._first_backoff_s
        for attempt in range(1, self._attempts + 1):
            result = await self._send(envelope, record)
            if result.status.code not in RESEND_CODES:
                logger.debug("settlement window=%s acknowledged: %s %s %s", record.window_id, result.status.code,
                             result.status.reason, result.state)
                return
            if attempt < self._attempts:
                await asyncio.sleep(backoff_s)
                backoff_s *= 2
        logger.warning("settlement window=%s: acknowledgement gave up after %d attempts", record.window_id,
                       self._attempts)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
