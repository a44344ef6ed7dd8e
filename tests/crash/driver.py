"""The load: the provinces' platforms as a crash test needs them — Xinjiang submitting signed transfers from
several threads, Gansu confirming what it was delivered — each resending unanswered messages byte for byte."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import common_pb2, payload_types, transfers_pb2
from province_stub.answers import read_receipt
from province_stub.messages import build_instruction_envelope, confirmation_message_id, header, new_transfer_id
from province_stub.signing import PublicKeyStore, load_private_key, sign_envelope
from scripts.launcher import CHANNEL_OPTIONS, GANSU, XINJIANG
from tests.crash.harness import GIVER, MOTHER

SUBMIT_METHOD = "/gongji.v1.Transfers/SubmitTransfer"
CONFIRM_METHOD = "/gongji.v1.Transfers/ConfirmTransfer"
AMOUNT_FEN = 100
# What a platform may resend the same bytes after: the call did not get the gateway's answer.
RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "ABORTED"})


@dataclass
class Message:
    """One signed message: every attempt sends exactly these request bytes."""

    key: str  # the transfer it is about
    request: bytes
    payload: bytes
    receipt: bytes = b""  # the first receipt's payload; every later answer must carry the same
    attempts: int = 0
    # An attempt failed (no answer) before the first answer arrived.
    was_unanswered: bool = False
    codes: list[str] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return bool(self.receipt)

    @property
    def transfer_id(self) -> str:
        return self.key


@dataclass
class Answer:
    code: str
    replay: bool = False
    receipt: bytes = b""
    reason: str = ""  # the gateway's ErrorInfo reason; none when the transport failed the call


def reason_of(error: grpc.RpcError) -> str:
    """The ErrorInfo reason the gateway gave, or "" (no ErrorInfo: the transport's own status)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


@dataclass
class CallStats:
    calls: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    replays_on_resend: int = 0  # resends answered as replays: committed before, the answer was lost
    first_time_on_resend: int = 0  # resends that were the first to commit: the earlier attempt never did
    receipt_mismatches: int = 0
    unexpected: list[str] = field(default_factory=list)
    # Every call: (started, ended, code, reason), monotonic seconds.
    timeline: list[tuple[float, float, str, str]] = field(default_factory=list)


class Platform:
    """A province platform's calls of one method: one channel per gateway, a gate, calls in flight counted.

    Calls that get no answer are resent, byte for byte, until answered; a call never hangs longer than
    its deadline. Worker i sends to targets[i % len(targets)].
    """

    def __init__(self, method: str, response: Any, targets: list[str], keys_dir: Path, state: str,
                 *, concurrency: int, deadline_s: float) -> None:
        self._method = method
        self._response = response
        self._state = state
        self._keys = PublicKeyStore(keys_dir)
        self._deadline_s = deadline_s
        self._channels: dict[str, grpc.Channel] = {}
        self._calls: dict[str, grpc.UnaryUnaryMultiCallable[bytes, Any]] = {}
        self.targets = list(targets)
        self._lock = threading.Lock()
        self.messages: dict[str, Message] = {}
        self._queue: deque[Message] = deque()
        self._gate = threading.Event()
        self._stopping = threading.Event()
        self._in_flight = 0
        self.stats = CallStats()
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"{method}-{i}", daemon=True)
                         for i in range(concurrency)]

    def _start_threads(self) -> None:
        for thread in self._threads:
            thread.start()

    def _call_for(self, target: str) -> grpc.UnaryUnaryMultiCallable[bytes, Any]:
        call = self._calls.get(target)
        if call is None:
            channel = self._channels[target] = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
            # Bytes in, so a resend is the very same request bytes; the answer parsed.
            call = self._calls[target] = channel.unary_unary(self._method, request_serializer=None,
                                                             response_deserializer=self._response.FromString)
        return call

    def send(self, message: Message, target: str) -> Answer:
        """One attempt; records what came of it. gRPC errors never escape."""
        call = self._call_for(target)
        started = time.monotonic()
        with self._lock:
            self._in_flight += 1
            message.attempts += 1
        try:
            answer = self._check(message, call(message.request, timeout=self._deadline_s))
        except grpc.RpcError as error:
            answer = Answer(error.code().name, reason=reason_of(error))
            if answer.code not in RETRYABLE:
                self._unexpected(f"{message.key}: {answer.code} {error.details()}")
        finally:
            with self._lock:
                self._in_flight -= 1
        with self._lock:
            self.stats.calls += 1
            self.stats.codes[answer.code] += 1
            self.stats.timeline.append((started, time.monotonic(), answer.code, answer.reason))
            message.codes.append(answer.code if not answer.replay else "OK(replay)")
            if answer.code == "OK":
                if not message.receipt:
                    message.receipt = answer.receipt
                    if message.was_unanswered:
                        if answer.replay:
                            self.stats.replays_on_resend += 1
                        else:
                            self.stats.first_time_on_resend += 1
                elif message.receipt != answer.receipt:
                    self.stats.receipt_mismatches += 1
                    self.stats.unexpected.append(f"{message.key}: a resend got another receipt")
            elif not message.receipt:
                message.was_unanswered = True
        return answer

    def _check(self, message: Message, response: Any) -> Answer:
        """OK only for a receipt the gateway signed over our payload's SHA-256, in the expected state."""
        receipt = read_receipt(self._keys, response.receipt, message.payload)
        if receipt is None or receipt.subject_id != message.key or receipt.state != self._state:
            self._unexpected(f"{message.key}: answer without a valid receipt ({receipt})")
            return Answer("BAD_RECEIPT")
        return Answer("OK", response.replay, response.receipt.payload)

    def _unexpected(self, what: str) -> None:
        with self._lock:
            self.stats.unexpected.append(what)

    def _next(self) -> Message | None:
        """What to send next: the oldest unanswered message (subclasses may make new ones)."""
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def _work(self, index: int) -> None:
        while not self._stopping.is_set():
            if not self._gate.wait(0.05):
                continue
            message = self._next()
            if message is None:
                self._stopping.wait(0.02)
                continue
            targets = self.targets
            answer = self.send(message, targets[index % len(targets)])
            if answer.code in RETRYABLE:
                with self._lock:
                    self._queue.append(message)
                # The gateway is away (killed, cut): do not spin on it.
                self._stopping.wait(0.05)

    def resume(self) -> None:
        self._gate.set()

    def stop_starting(self) -> None:
        """Start no more calls (those in flight go on)."""
        self._gate.clear()

    def pause(self, timeout_s: float = 15.0) -> None:
        """Start no more calls; wait until none is in flight (each ends by its deadline at the latest)."""
        self._gate.clear()
        deadline = time.monotonic() + timeout_s
        while self.in_flight:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.in_flight} calls still in flight {timeout_s:.0f}s after pausing")
            time.sleep(0.01)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def unanswered(self) -> list[Message]:
        with self._lock:
            return [m for m in self.messages.values() if not m.receipt]

    @property
    def acknowledged(self) -> list[Message]:
        with self._lock:
            return [m for m in self.messages.values() if m.receipt]

    def wait_connected(self, timeout_s: float = 15.0) -> None:
        for target in self.targets:
            self._call_for(target)
            grpc.channel_ready_future(self._channels[target]).result(timeout=timeout_s)

    def resend_unanswered(self, timeout_s: float = 30.0) -> int:
        """With the load paused: resend every unanswered message (same bytes) until each has an answer."""
        assert not self._gate.is_set(), "pause first"
        with self._lock:
            self._queue.clear()
        deadline = time.monotonic() + timeout_s
        resent = 0
        while pending := self.unanswered:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pending)} messages still unanswered after {timeout_s:.0f}s of resends")
            for index, message in enumerate(pending):
                self.send(message, self.targets[index % len(self.targets)])
                resent += 1
            if self.unanswered:
                time.sleep(0.2)
        return resent

    def close(self) -> None:
        self._stopping.set()
        self._gate.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(10)
        for channel in self._channels.values():
            channel.close()


class Driver(Platform):
    """Xinjiang's platform: closed-loop submissions of new signed instructions (unanswered ones first)."""

    def __init__(self, targets: list[str], keys_dir: Path, binding_id: str, *, concurrency: int = 8,
                 deadline_s: float = 5.0, seed: int = 0) -> None:
        super().__init__(SUBMIT_METHOD, transfers_pb2.SubmitTransferResponse, targets, keys_dir, "RECEIVED",
                         concurrency=concurrency, deadline_s=deadline_s)
        self._key = load_private_key(keys_dir / f"{XINJIANG}-k1.key")
        self._binding_id = binding_id
        self._random = random.Random(seed)
        self._start_threads()

    @property
    def submissions(self) -> dict[str, Message]:
        return self.messages

    def new_submission(self) -> Message:
        transfer_id = new_transfer_id(XINJIANG)
        envelope = build_instruction_envelope(
            XINJIANG, f"{XINJIANG}-k1", self._key, transfer_id,
            common_pb2.PersonRef(id_number=GIVER[0], pooling_area=GIVER[1]),
            common_pb2.PersonRef(id_number=MOTHER[0], pooling_area=MOTHER[1]), GANSU, AMOUNT_FEN,
            binding_id=self._binding_id)
        message = Message(transfer_id, transfers_pb2.SubmitTransferRequest(instruction=envelope).SerializeToString(),
                          envelope.payload)
        with self._lock:
            self.messages[transfer_id] = message
        return message

    def _next(self) -> Message:
        return super()._next() or self.new_submission()

    def send_everywhere_at_once(self, message: Message) -> list[Answer]:
        """The same bytes to every target at the same moment (a platform failing over while the first
        call is still being processed): one transfer, one receipt, whichever answers."""
        barrier = threading.Barrier(len(self.targets))
        answers: list[Answer] = [Answer("NOT_SENT")] * len(self.targets)

        def one(index: int) -> None:
            barrier.wait(10)
            answers[index] = self.send(message, self.targets[index])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(self.targets))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(2 * self._deadline_s + 10)
        return answers

    def run_until(self, acknowledged: int, timeout_s: float = 30.0) -> None:
        """Let the load run until at least `acknowledged` submissions have their receipt, then pause."""
        self.resume()
        deadline = time.monotonic() + timeout_s
        try:
            while len(self.acknowledged) < acknowledged:
                if time.monotonic() > deadline:
                    raise AssertionError(f"only {len(self.acknowledged)} of {acknowledged} submissions acknowledged "
                                         f"within {timeout_s:.0f}s (codes {dict(self.stats.codes)})")
                time.sleep(0.01)
        finally:
            self.pause()

    def check_replays(self, sample: int) -> int:
        """Resend `sample` acknowledged submissions: each must be a replay with the very same receipt."""
        chosen = self._random.sample(self.acknowledged, min(sample, len(self.acknowledged)))
        for index, message in enumerate(chosen):
            answer = self.send(message, self.targets[index % len(self.targets)])
            assert answer.code == "OK" and answer.replay, f"{message.key}: resend answered {answer}"
            assert answer.receipt == message.receipt, f"{message.key}: resend got another receipt"
        return len(chosen)


class Confirmer(Platform):
    """Gansu's platform confirming (CREDITED) every credit its stub holds PENDING, as a platform that
    retries until answered. Used where the stub's own confirmer falls short: it resends until the
    delivery's confirm_by (province_stub/confirmer.py), but its channel keeps gRPC's default reconnect
    backoff (a second, growing to two minutes), so across repeated gateway restarts its resends would
    wait longer than these tests do. The stub is set to
    confirm_mode NEVER; this signs each confirmation once, with the stub's message id for it, and resends
    those bytes until answered."""

    def __init__(self, targets: list[str], keys_dir: Path, control: control_pb2_grpc.StubControlStub,
                 *, concurrency: int = 2, deadline_s: float = 5.0, poll_s: float = 0.2) -> None:
        super().__init__(CONFIRM_METHOD, transfers_pb2.ConfirmTransferResponse, targets, keys_dir, "COMMITTED",
                         concurrency=concurrency, deadline_s=deadline_s)
        self._key = load_private_key(keys_dir / f"{GANSU}-k1.key")
        self._control = control
        self._poll_s = poll_s
        self._poller = threading.Thread(target=self._poll, name="confirm-poll", daemon=True)
        self._poller.start()
        self._start_threads()

    def _sign(self, transfer_id: str) -> Message:
        confirmation = transfers_pb2.TransferConfirmation(
            header=header(confirmation_message_id(transfer_id, False), GANSU, "gateway"), transfer_id=transfer_id,
            decision=transfers_pb2.CONFIRMATION_DECISION_CREDITED)
        envelope = sign_envelope(self._key, GANSU, f"{GANSU}-k1", payload_types.TRANSFER_CONFIRMATION,
                                 confirmation.SerializeToString())
        return Message(transfer_id, transfers_pb2.ConfirmTransferRequest(confirmation=envelope).SerializeToString(),
                       envelope.payload)

    def _poll(self) -> None:
        """New PENDING credits at the stub become confirmations to send."""
        while not self._stopping.wait(self._poll_s):
            try:
                credits = self._control.Snapshot(control_pb2.SnapshotRequest(), timeout=10).credits
            except grpc.RpcError:
                continue
            fresh = [c.transfer_id for c in credits if c.status == "PENDING" and c.transfer_id not in self.messages]
            for transfer_id in fresh:
                message = self._sign(transfer_id)
                with self._lock:
                    self.messages[transfer_id] = message
                    self._queue.append(message)

    def close(self) -> None:
        super().close()
        self._poller.join(10)


def pause_all(platforms: list[Platform]) -> None:
    for platform in platforms:
        platform.stop_starting()
    for platform in platforms:
        platform.pause()


def in_flight(platforms: list[Platform]) -> int:
    return sum(platform.in_flight for platform in platforms)
