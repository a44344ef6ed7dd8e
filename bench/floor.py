"""python -m bench.floor: the transfer flow's five RPCs doing only the work the contract cannot do without.

A lower bound on what any implementation of `api.md` costs on this machine, run beside the echo. Like
`bench.pipeline`, a relay gateway and two relay provinces pass each transfer along its path:

    driver --Submit--> gateway --Deliver--> receiver --Confirm--> gateway --Notify--> both provinces

but each hop also does the contract's irreducible work, and nothing else:

- Ed25519 (`cryptography`): the giver signs the instruction (the driver); the gateway verifies it,
  signs a receipt, signs its envelope on the delivery, verifies the receiver's signed confirmation,
  signs a receipt, and signs one outcome notification for each province (each names its receiver in
  its header, so the two are different messages). With `--province-checks` the provinces also verify
  what they receive, as the stub provinces do (the delivery's two signatures, the confirmation's
  receipt, each notification); without it they verify nothing, which no real province would do.
- With `--db`: the gateway's durable records in SQLite (WAL, synchronous=NORMAL, as the bench runs the
  real gateway), through the standard library's `sqlite3` with no ORM: a submission commits its
  idempotency key (sender, message id, SHA-256, response) and the transfer in one transaction before
  it answers, as `api.md` requires; so does a confirmation (its key and the new state). The delivery's
  and the notifications' acknowledgements are written in batches, one transaction for all that
  arrived since the last one. No routing table, validation, bindings, limits, audit chain,
  encryption at rest, events, outbox rows, retries or logs.

Every call is answered at once and the next call made in a task of its own, at most 256 in flight per
relay, as in `bench.pipeline`. Whatever rate this reaches, an implementation that also does what the
issues ask beyond it can only be slower: the bench measures the real flow as a share of it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import sqlite3
import struct
import time
from typing import Any

import grpc
import grpc.aio
import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bench.pipeline import (
    CONFIRM,
    DELIVER,
    KEY_BYTES,
    NOTIFY,
    Tasks,
    count_handler,
    relay_method,
    relay_parser,
    serve_relay,
)

SIGNATURE_BYTES = 64
TAG = b"gongji.v1\x00"
GATEWAY = "gateway"
GIVER = "650000"
RECEIVER = "620000"


@functools.cache
def signing_key(party: str) -> Ed25519PrivateKey:
    """Each party's key, derived from its name: every relay and the driver know every public key. Made
    once: loading a private key derives its public key, which costs about as much as a signature."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"gongji bench floor " + party.encode()).digest())


def public_key(party: str) -> Ed25519PublicKey:
    return signing_key(party).public_key()


def signed(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """payload + its 64-byte signature over the tagged payload (the envelope's shape, in brief)."""
    return payload + key.sign(TAG + payload)


def opened(public: Ed25519PublicKey, message: bytes) -> bytes:
    """The payload of `signed(...)`, its signature verified (InvalidSignature if not)."""
    payload, signature = message[:-SIGNATURE_BYTES], message[-SIGNATURE_BYTES:]
    public.verify(signature, TAG + payload)
    return payload


def instruction(key: bytes, size: int) -> bytes:
    """What the driver sends: a transfer's instruction of `size` bytes, signed by the giver's province."""
    return signed(signing_key(GIVER), key + bytes(max(0, size - KEY_BYTES - SIGNATURE_BYTES)))


class Records:
    """The gateway's durable records: idempotency keys and transfers, committed before each answer."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit: transactions are explicit
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS requests (sender TEXT NOT NULL, message_id BLOB NOT NULL,"
            " payload_sha256 BLOB NOT NULL, response BLOB NOT NULL, PRIMARY KEY (sender, message_id));"
            "CREATE TABLE IF NOT EXISTS transfers (transfer_id BLOB PRIMARY KEY, state TEXT NOT NULL,"
            " instruction BLOB NOT NULL, notified INTEGER NOT NULL DEFAULT 0);"
        )
        self._acks: list[tuple[str, bytes]] = []
        self._flush_scheduled = False

    def _transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """All or nothing: a key already claimed (a resend) raises IntegrityError and changes nothing."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, values in statements:
                self._db.execute(sql, values)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def submitted(self, transfer_id: bytes, digest: bytes, receipt: bytes, payload: bytes) -> None:
        self._transaction([
            ("INSERT INTO requests VALUES (?, ?, ?, ?)", (GIVER, transfer_id, digest, receipt)),
            ("INSERT INTO transfers (transfer_id, state, instruction) VALUES (?, 'RECEIVED', ?)",
             (transfer_id, payload)),
        ])

    def confirmed(self, message_id: bytes, digest: bytes, receipt: bytes, transfer_id: bytes) -> None:
        self._transaction([
            ("INSERT INTO requests VALUES (?, ?, ?, ?)", (RECEIVER, message_id, digest, receipt)),
            ("UPDATE transfers SET state = 'COMMITTED' WHERE transfer_id = ?", (transfer_id,)),
        ])

    def acknowledged(self, kind: str, transfer_id: bytes) -> None:
        """A province answered a delivery or a notification: written with the others of this moment."""
        self._acks.append((kind, transfer_id))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        acks, self._acks, self._flush_scheduled = self._acks, [], False
        self._db.execute("BEGIN IMMEDIATE")
        # A confirmation can overtake its delivery's answer: DELIVERED never replaces a later state.
        self._db.executemany(
            "UPDATE transfers SET state = 'DELIVERED' WHERE transfer_id = ? AND state = 'RECEIVED'",
            [(tid,) for kind, tid in acks if kind == "deliver"])
        self._db.executemany("UPDATE transfers SET notified = notified + 1 WHERE transfer_id = ?",
                             [(tid,) for kind, tid in acks if kind == "notify"])
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


def gateway_handlers(receiver: grpc.aio.Channel, provinces: dict[str, grpc.aio.Channel],
                     records: Records | None) -> dict[str, Any]:
    tasks = Tasks()
    deliver = relay_method(receiver, DELIVER)
    notifies = {code: relay_method(channel, NOTIFY) for code, channel in provinces.items()}
    own = signing_key(GATEWAY)
    giver, receiving = public_key(GIVER), public_key(RECEIVER)
    served: list[float] = []

    def receipt(digest: bytes, state: bytes) -> bytes:
        return signed(own, digest + state + struct.pack("<d", time.time()))

    async def send(call: Any, request: bytes, kind: str, transfer_id: bytes) -> None:
        try:
            await call(request, timeout=10.0)
        except grpc.aio.AioRpcError:
            return
        if records is not None:
            records.acknowledged(kind, transfer_id)

    async def submit(request: bytes, context: Any) -> bytes:
        served.append(time.time())
        payload = opened(giver, request)
        transfer_id = payload[:KEY_BYTES]
        digest = hashlib.sha256(payload).digest()
        answer = receipt(digest, b"RECEIVED")
        if records is not None:
            records.submitted(transfer_id, digest, answer, payload)
        # The instruction goes on with the giver's signature, inside the gateway's own envelope.
        tasks.spawn_coroutine(send(deliver, signed(own, request), "deliver", transfer_id))
        return answer

    async def confirm(request: bytes, context: Any) -> bytes:
        served.append(time.time())
        payload = opened(receiving, request)
        message_id, transfer_id = payload[:KEY_BYTES], payload[KEY_BYTES:2 * KEY_BYTES]
        digest = hashlib.sha256(payload).digest()
        answer = receipt(digest, b"COMMITTED")
        if records is not None:
            records.confirmed(message_id, digest, answer, transfer_id)
        for code, notify in notifies.items():
            outcome = signed(own, transfer_id + b"COMMITTED" + code.encode())
            tasks.spawn_coroutine(send(notify, outcome, "notify", transfer_id))
        return answer

    return {"Submit": submit, "Confirm": confirm, "Count": count_handler([], served)}


def province_handlers(gateway: grpc.aio.Channel, code: str, checks: bool) -> dict[str, Any]:
    tasks = Tasks()
    confirm = relay_method(gateway, CONFIRM)
    own = signing_key(code)
    gateway_key, giver = public_key(GATEWAY), public_key(GIVER)
    notified: list[float] = []
    served: list[float] = []
    confirmations = iter(range(1 << 62))

    async def confirm_and_check(request: bytes) -> None:
        try:
            receipt = await confirm(request, timeout=10.0)
        except grpc.aio.AioRpcError:
            return
        if checks:
            opened(gateway_key, receipt)

    async def deliver(request: bytes, context: Any) -> bytes:
        served.append(time.time())
        if checks:
            opened(giver, opened(gateway_key, request))
        transfer_id = request[:KEY_BYTES]
        message_id = next(confirmations).to_bytes(KEY_BYTES, "big")
        tasks.spawn_coroutine(confirm_and_check(signed(own, message_id + transfer_id + b"CREDITED")))
        return b"ACCEPTED"

    async def notify(request: bytes, context: Any) -> bytes:
        if checks:
            opened(gateway_key, request)  # a forged outcome is refused, and not counted as told
        notified.append(now := time.time())
        served.append(now)
        return b"OK"

    return {"Deliver": deliver, "Notify": notify, "Count": count_handler(notified, served)}


async def serve(role: str, listen: str, peers: list[str], db: str | None, checks: bool, code: str,
                max_seconds: float) -> None:
    channels = [grpc.aio.insecure_channel(peer) for peer in peers]
    records = Records(db) if role == "gateway" and db else None
    if role == "gateway":
        # The last peer is the receiving province, the first the giver's.
        handlers = gateway_handlers(channels[-1], {GIVER: channels[0], RECEIVER: channels[-1]}, records)
    else:
        handlers = province_handlers(channels[0], code, checks)
    await serve_relay(f"floor {role}", listen, handlers, channels, max_seconds)
    if records is not None:
        records.close()


def main() -> None:
    parser = relay_parser("python -m bench.floor", __doc__)
    parser.add_argument("--code", default=RECEIVER, help="a province's code (its signing key)")
    parser.add_argument("--db", help="gateway: keep the durable records in this SQLite file")
    parser.add_argument("--province-checks", action="store_true", help="provinces verify what they receive")
    args = parser.parse_args()
    uvloop.run(serve(args.role, args.listen, args.peer, args.db, args.province_checks, args.code,
                     args.max_seconds))


if __name__ == "__main__":
    main()
