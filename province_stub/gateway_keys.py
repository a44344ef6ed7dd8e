"""The gateway's public keys, asked of the gateway itself (gongji.v1.GatewayKeys/ListGatewayKeys).

A provincial platform does not need the gateway's key files: the gateway lists, on the provinces'
port, every key whose signatures are good now or later, so a rotation (a new current key, the old
one given a `valid_until`) is seen by asking again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import grpc.aio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protos.gongji.v1 import common_pb2, keys_pb2, keys_pb2_grpc
from province_stub.signing import ALG_ED25519, GATEWAY_SIGNER, verify_envelope

logger = logging.getLogger(__name__)

# The gateway is waiting on our answer while we ask it for a key: keep the question short.
FETCH_DEADLINE_S = 2.0
# However many unknown key ids arrive, the gateway is asked at most once in this long.
REFETCH_INTERVAL_S = 1.0
# Keys fetched longer ago than this are asked for again, so a retirement (valid_until) is seen.
MAX_AGE_S = 60.0


@dataclass(frozen=True)
class _Key:
    # None when the key is not Ed25519, or its listed bytes are not an Ed25519 public key.
    public_key: Ed25519PublicKey | None
    # Seconds since the epoch; None while the key is current.
    valid_until: float | None

    @classmethod
    def from_proto(cls, key: keys_pb2.GatewayKey) -> _Key:
        public_key: Ed25519PublicKey | None = None
        if key.alg == ALG_ED25519 and len(key.public_key) == 32:
            try:
                public_key = Ed25519PublicKey.from_public_bytes(key.public_key)
            except ValueError:
                public_key = None
        valid_until = key.valid_until.ToNanoseconds() / 1e9 if key.HasField("valid_until") else None
        return cls(public_key, valid_until)

    def usable_at(self, now: float) -> Ed25519PublicKey | None:
        if self.valid_until is not None and self.valid_until <= now:
            return None
        return self.public_key


class GatewayKeyDirectory:
    """The gateway's keys as ListGatewayKeys last listed them, asked again when needed.

    `get(key_id)` answers the key if it is listed, Ed25519 and not past its `valid_until` by `now()`
    (a key cached while good is refused once that passes). An unknown key id, or a list older than
    `max_age_s`, makes it ask again, but never more than once per `refetch_interval_s` (a flood of
    bogus key ids cannot make us hammer the gateway). Every question carries `deadline_s`; when the
    gateway cannot be reached the list we have stays, and an unknown key stays unknown.

    Within the interval an unknown key is answered None at once, for the gateway to resend; with
    `wait_for_refetch` (for what the gateway has just answered us, which it will not resend) the
    caller waits for the next question allowed instead, so at most the interval plus the deadline.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        deadline_s: float = FETCH_DEADLINE_S,
        refetch_interval_s: float = REFETCH_INTERVAL_S,
        max_age_s: float = MAX_AGE_S,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = keys_pb2_grpc.GatewayKeysStub(channel)
        self._deadline_s = deadline_s
        self._refetch_interval_s = refetch_interval_s
        self._max_age_s = max_age_s
        self._now = now
        self._monotonic = monotonic
        self._keys: dict[str, _Key] = {}
        self._fetched_at: float | None = None  # monotonic time of the last list received
        self._asked_at: float | None = None  # monotonic time of the last question, answered or not
        # One question at a time: callers arriving meanwhile wait for its answer rather than asking too.
        self._asking = asyncio.Lock()

    async def get(self, key_id: str, *, wait_for_refetch: bool = False) -> Ed25519PublicKey | None:
        key = self._usable(key_id)
        if key is not None and not self._stale():
            return key
        if wait_for_refetch and key is None:
            await self._until_refetch_allowed()
        await self._fetch()
        return self._usable(key_id)

    async def verify(
        self, envelope: common_pb2.SignedEnvelope, *, payload_type: str, wait_for_refetch: bool = False
    ) -> str:
        """Check an envelope claimed to come from the gateway; answer "" if valid, else the failure.

        The failure is "UNKNOWN_KEY" when its key_id names no usable gateway key (retry later),
        "BAD_SIGNATURE" otherwise.
        """
        if envelope.signer != GATEWAY_SIGNER or envelope.payload_type != payload_type:
            return "BAD_SIGNATURE"
        key = await self.get(envelope.key_id, wait_for_refetch=wait_for_refetch)
        if key is None:
            return "UNKNOWN_KEY"
        return "" if verify_envelope(envelope, key) else "BAD_SIGNATURE"

    def _usable(self, key_id: str) -> Ed25519PublicKey | None:
        key = self._keys.get(key_id)
        return key.usable_at(self._now()) if key is not None else None

    def _stale(self) -> bool:
        return self._fetched_at is None or self._monotonic() - self._fetched_at >= self._max_age_s

    async def _until_refetch_allowed(self) -> None:
        # Outside the lock: callers that do not wait keep their immediate answer meanwhile.
        if self._asked_at is not None:
            remaining = self._asked_at + self._refetch_interval_s - self._monotonic()
            if remaining > 0:
                # A hair more: the event loop may wake a timer a little early.
                await asyncio.sleep(remaining + 0.01)

    async def _fetch(self) -> None:
        async with self._asking:
            started = self._monotonic()
            if self._asked_at is not None and started - self._asked_at < self._refetch_interval_s:
                return
            self._asked_at = started
            try:
                response = await self._stub.ListGatewayKeys(
                    keys_pb2.ListGatewayKeysRequest(), timeout=self._deadline_s
                )
            except (grpc.RpcError, grpc.aio.UsageError) as error:
                code = error.code().name if isinstance(error, grpc.aio.AioRpcError) else type(error).__name__
                logger.warning("could not list the gateway's keys: %s", code)
                return
            self._keys = {key.key_id: _Key.from_proto(key) for key in response.keys}
            self._fetched_at = self._monotonic()
            logger.debug("gateway keys: %s", ", ".join(self._keys) or "none")
