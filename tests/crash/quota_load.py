"""The quota regime's load for the kill -9 cycles: the provinces' platforms granting, drawing, reversing and
dissolving, each message resent byte for byte until answered.

Xinjiang grants through its stub, which freezes the giver's account first, then signs and sends (asked again
with the same message_id, it resends the same bytes and freezes nothing more). Gansu's consumptions and
reversals, and either side's dissolutions (which release the unused quota, Q8), are signed here with the
provinces' keys, as the transfers' Driver signs its instructions.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import common_pb2, payload_types, quotas_pb2, relations_pb2
from province_stub.answers import RESEND_CODES, read_receipt
from province_stub.messages import ProvinceSigner, header
from province_stub.signing import GATEWAY_SIGNER, PublicKeyStore, load_private_key
from scripts.launcher import CHANNEL_OPTIONS, GANSU, XINJIANG
from tests.crash.driver import RETRYABLE, reason_of
from tests.crash.harness import GIVER, MOTHER
from tests.support import unique_ref

GRANT, CONSUME, REVERSE, DISSOLVE = "grant", "consume", "reverse", "dissolve"
METHODS = {CONSUME: ("/gongji.v1.Quotas/ConsumeQuota", quotas_pb2.ConsumeQuotaResponse),
           REVERSE: ("/gongji.v1.Quotas/ReverseConsumption", quotas_pb2.ReverseConsumptionResponse),
           DISSOLVE: ("/gongji.v1.Relations/DissolveBinding", relations_pb2.DissolveBindingResponse)}
# Threads per kind of call: every kind in flight at every moment a kill may land.
LANES = {GRANT: 2, CONSUME: 4, REVERSE: 2, DISSOLVE: 1}
# Refusals a steady load meets by itself: the quota drawn down, a binding dissolved while a call about it was
# on its way. Any other refusal is a finding.
EXPECTED_REFUSALS = {GRANT: {"FAILED_PRECONDITION/BINDING_NOT_ACTIVE"},
                     CONSUME: {"FAILED_PRECONDITION/QUOTA_EXCEEDED", "FAILED_PRECONDITION/BINDING_NOT_ACTIVE"},
                     REVERSE: set(), DISSOLVE: set()}
KINDS = (quotas_pb2.CONSUMPTION_KIND_MEDICAL, quotas_pb2.CONSUMPTION_KIND_PHARMACY,
         quotas_pb2.CONSUMPTION_KIND_RESIDENT_PREMIUM, quotas_pb2.CONSUMPTION_KIND_LTC_PREMIUM)
# Dissolutions leave at least this many bindings to draw on; the test binds new ones between cycles.
MIN_OPEN = 2
GIVER_BALANCE_FEN = 10**12
# A grant goes through the stub, which itself sends up to 3 times with a 5 s deadline.
GRANT_CONTROL_TIMEOUT_S = 40.0


@dataclass
class Call:
    """One signed message and what came of it: every attempt sends the same bytes."""

    kind: str
    key: str  # its message_id
    binding_id: str
    amount_fen: int  # a grant's quota, a draw's request, a reversal's amount
    request: bytes = b""  # the signed request (a grant's bytes are the stub's, kept by message_id)
    payload: bytes = b""
    settlement_ref: str = ""
    consumption_id: str = ""  # a reversal's consumption
    outcome: str = ""  # "OK", or the refusal "CODE/REASON"; "" while unanswered
    receipt: bytes = b""  # the first receipt's payload; every later answer must carry the same
    state: str = ""  # the receipt's state
    drawn_fen: int = 0
    reserved_fen: int = 0  # a consumption's: reversed or being reversed
    attempts: int = 0
    was_unanswered: bool = False


@dataclass
class Lot:
    """A binding as the load knows it."""

    binding_id: str
    open: bool = True  # no dissolution sent: grants and consumptions may pick it
    quota_fen: int = 0  # the quota its last acknowledged grant set
    granting: bool = False  # a grant is unanswered: the next one waits (grants here only raise)


@dataclass
class LoadStats:
    codes: Counter[str] = field(default_factory=Counter)  # "kind:code"
    replays_on_resend: Counter[str] = field(default_factory=Counter)  # committed, the answer was lost
    first_time_on_resend: Counter[str] = field(default_factory=Counter)  # the earlier attempt never committed
    unexpected: list[str] = field(default_factory=list)


class QuotaLoad:
    """The lanes (threads) of the load, gated as the transfers' Platform is: resume, pause, resend."""

    def __init__(self, gateway: str, keys_dir: Path, stub_control: control_pb2_grpc.StubControlStub,
                 bindings: list[str], *, seed: int, deadline_s: float = 5.0) -> None:
        self._random = random.Random(seed)
        self._keys = PublicKeyStore(keys_dir)
        self._signers = {code: ProvinceSigner(code, f"{code}-k1", load_private_key(keys_dir / f"{code}-k1.key"))
                         for code in (XINJIANG, GANSU)}
        self._stub = stub_control
        self._deadline_s = deadline_s
        self._channel = grpc.insecure_channel(gateway, options=CHANNEL_OPTIONS)
        self._calls = {kind: self._channel.unary_unary(method, request_serializer=None,
                                                       response_deserializer=response.FromString)
                       for kind, (method, response) in METHODS.items()}
        self._lock = threading.Lock()
        self.lots = {binding_id: Lot(binding_id) for binding_id in bindings}
        self.calls: dict[str, Call] = {}
        self._queues: dict[str, deque[Call]] = {kind: deque() for kind in LANES}
        self._gate = threading.Event()
        self._stopping = threading.Event()
        self._in_flight = 0
        self._next_dissolution = 0.0
        self._dissolver = 0
        self.stats = LoadStats()
        self._threads = [threading.Thread(target=self._work, args=(kind,), name=f"quota-{kind}-{i}", daemon=True)
                         for kind, count in LANES.items() for i in range(count)]
        for thread in self._threads:
            thread.start()

    # -- what to send next -------------------------------------------------------------------------
    def add_binding(self, binding_id: str) -> None:
        with self._lock:
            self.lots[binding_id] = Lot(binding_id)

    def _open_lots(self, granting: bool | None = None) -> list[Lot]:
        return [lot for lot in self.lots.values() if lot.open and (granting is None or lot.granting == granting)]

    def _make(self, kind: str) -> Call | None:
        """A new message of this lane's kind, or None when there is nothing to do now (under the lock)."""
        pick = self._random
        if kind == GRANT:
            lots = self._open_lots(granting=False)
            if not lots:
                return None
            lot = pick.choice(lots)
            lot.granting = True
            return Call(GRANT, f"qg-{uuid.uuid4().hex}", lot.binding_id, lot.quota_fen + pick.randint(2_000, 20_000))
        if kind == CONSUME:
            lots = self._open_lots()
            return self._consumption(pick.choice(lots)) if lots else None
        if kind == REVERSE:
            drawn = [c for c in self.calls.values() if c.kind == CONSUME and c.drawn_fen > c.reserved_fen]
            return self._reversal(pick.choice(drawn)) if drawn else None
        lots = self._open_lots()
        if time.monotonic() < self._next_dissolution or len(lots) <= MIN_OPEN:
            return None
        self._next_dissolution = time.monotonic() + pick.uniform(0.2, 0.7)
        lot = pick.choice(lots)
        lot.open = False
        # Either side may dissolve (D9): the giver's and the receiver's province in turn.
        self._dissolver += 1
        sender = (XINJIANG, GANSU)[self._dissolver % 2]
        message_id = f"dq-{uuid.uuid4().hex}"
        dissolution = relations_pb2.BindingDissolution(header=header(message_id, sender, GATEWAY_SIGNER),
                                                       binding_id=lot.binding_id, reason="FAMILY_REQUEST")
        envelope = self._signers[sender].sign(payload_types.BINDING_DISSOLUTION, dissolution.SerializeToString())
        return Call(DISSOLVE, message_id, lot.binding_id, 0,
                    relations_pb2.DissolveBindingRequest(dissolution=envelope).SerializeToString(), envelope.payload)

    def _consumption(self, lot: Lot) -> Call:
        pick = self._random
        message_id, settlement_ref = f"cq-{uuid.uuid4().hex}", unique_ref("ST")
        consumption = quotas_pb2.QuotaConsumption(
            header=header(message_id, GANSU, GATEWAY_SIGNER), binding_id=lot.binding_id,
            receiver=common_pb2.PersonRef(id_number=MOTHER[0], pooling_area=MOTHER[1]),
            amount_fen=pick.randint(100, 6_000), allow_partial=pick.random() < 0.7, kind=pick.choice(KINDS),
            settlement_ref=settlement_ref, care_pooling_area=MOTHER[1], own_account_used_fen=pick.randint(0, 5_000),
            own_account_balance_fen=0)
        envelope = self._signers[GANSU].sign(payload_types.QUOTA_CONSUMPTION, consumption.SerializeToString())
        return Call(CONSUME, message_id, lot.binding_id, consumption.amount_fen,
                    quotas_pb2.ConsumeQuotaRequest(consumption=envelope).SerializeToString(), envelope.payload,
                    settlement_ref=settlement_ref)

    def _reversal(self, drawn: Call) -> Call:
        pick = self._random
        left = drawn.drawn_fen - drawn.reserved_fen
        amount = left if pick.random() < 0.3 else pick.randint(1, left)
        drawn.reserved_fen += amount
        message_id = f"rv-{uuid.uuid4().hex}"
        reversal = quotas_pb2.ConsumptionReversal(
            header=header(message_id, GANSU, GATEWAY_SIGNER), binding_id=drawn.binding_id,
            settlement_ref=drawn.settlement_ref, amount_fen=amount,
            reason=pick.choice(("DRUG_RETURNED", "SETTLEMENT_CANCELLED")))
        envelope = self._signers[GANSU].sign(payload_types.CONSUMPTION_REVERSAL, reversal.SerializeToString())
        return Call(REVERSE, message_id, drawn.binding_id, amount,
                    quotas_pb2.ReverseConsumptionRequest(reversal=envelope).SerializeToString(), envelope.payload,
                    settlement_ref=drawn.settlement_ref, consumption_id=drawn.key)

    # -- sending -----------------------------------------------------------------------------------
    def send(self, call: Call) -> str:
        """One attempt; records what came of it and answers its code. gRPC errors never escape."""
        with self._lock:
            self._in_flight += 1
            call.attempts += 1
        try:
            code, answer = self._grant(call) if call.kind == GRANT else self._direct(call)
        finally:
            with self._lock:
                self._in_flight -= 1
        with self._lock:
            self.stats.codes[f"{call.kind}:{code.partition('/')[0]}"] += 1
            if answer is None:  # no answer: resend
                if not call.outcome:
                    call.was_unanswered = True
                return code
            outcome, receipt, state, drawn, replay = answer
            if call.outcome:  # answered before: the same answer again
                if (call.outcome, call.receipt) != (outcome, receipt):
                    self.stats.unexpected.append(f"{call.kind} {call.key}: {outcome} after {call.outcome}, "
                                                 f"or another receipt")
                return code
            call.outcome, call.receipt, call.state, call.drawn_fen = outcome, receipt, state, drawn
            if call.was_unanswered:
                (self.stats.replays_on_resend if replay else self.stats.first_time_on_resend)[call.kind] += 1
            if outcome != "OK" and outcome not in EXPECTED_REFUSALS[call.kind]:
                self.stats.unexpected.append(f"{call.kind} {call.key}: refused {outcome}")
            self._answered(call)
        return code

    def _answered(self, call: Call) -> None:
        """The book follows the first answer (under the lock)."""
        if call.kind == GRANT:
            lot = self.lots[call.binding_id]
            lot.granting = False
            if call.outcome == "OK":
                lot.quota_fen = call.amount_fen
        elif call.kind == REVERSE and call.outcome != "OK":
            self.calls[call.consumption_id].reserved_fen -= call.amount_fen

    def _grant(self, call: Call) -> tuple[str, tuple[str, bytes, str, int, bool] | None]:
        try:
            answer = self._stub.GrantQuota(control_pb2.StubGrantRequest(
                binding_id=call.binding_id, giver_id_number=GIVER[0], quota_fen=call.amount_fen, message_id=call.key),
                timeout=GRANT_CONTROL_TIMEOUT_S)
        except grpc.RpcError as error:  # the stub itself did not answer: not what is under test
            self._unexpected(f"grant {call.key}: the stub's control answered {error.code().name}")
            return "STUB_" + error.code().name, None
        if answer.code in RESEND_CODES:
            return answer.code, None
        if answer.code == "OK" and not answer.receipt_verified:
            self._unexpected(f"grant {call.key}: answer without a valid receipt")
            return "BAD_RECEIPT", None
        outcome = answer.code if answer.code == "OK" else f"{answer.code}/{answer.reason}"
        # The stub keeps no receipt bytes: a grant's answers are compared by the figures after it.
        figures = answer.quota.SerializeToString(deterministic=True)
        return answer.code, (outcome, figures if answer.code == "OK" else b"", "", 0, answer.replay)

    def _direct(self, call: Call) -> tuple[str, tuple[str, bytes, str, int, bool] | None]:
        try:
            response = self._calls[call.kind](call.request, timeout=self._deadline_s)
        except grpc.RpcError as error:
            code = error.code().name
            if code in RETRYABLE:
                return code, None
            return code, (f"{code}/{reason_of(error)}", b"", "", 0, False)
        receipt = read_receipt(self._keys, response.receipt, call.payload)
        subject = call.binding_id if call.kind == DISSOLVE else (call.consumption_id or call.key)
        if receipt is None or receipt.subject_id != subject:
            self._unexpected(f"{call.kind} {call.key}: answer without a valid receipt ({receipt})")
            return "BAD_RECEIPT", None
        drawn = 0
        if call.kind == CONSUME:
            drawn = response.drawn_fen
            if receipt.drawn_fen != drawn or receipt.state != "DRAWN" or not 0 < drawn <= call.amount_fen:
                self._unexpected(f"consume {call.key}: drawn {drawn}, receipt {receipt.drawn_fen} {receipt.state}")
        return "OK", ("OK", response.receipt.payload, receipt.state, drawn, response.replay)

    def _unexpected(self, what: str) -> None:
        with self._lock:
            self.stats.unexpected.append(what)

    # -- the lanes ---------------------------------------------------------------------------------
    def _work(self, kind: str) -> None:
        queue = self._queues[kind]
        while not self._stopping.is_set():
            if not self._gate.wait(0.05):
                continue
            with self._lock:
                call = queue.popleft() if queue else self._make(kind)
                if call is not None:
                    self.calls[call.key] = call
            if call is None:
                self._stopping.wait(0.02)
                continue
            self.send(call)
            if not call.outcome:
                with self._lock:
                    queue.append(call)  # unanswered: first again next time, the same bytes
                self._stopping.wait(0.05)  # the gateway is away: do not spin on it

    def resume(self) -> None:
        self._gate.set()

    def stop_starting(self) -> None:
        self._gate.clear()

    def pause(self, timeout_s: float = 2 * GRANT_CONTROL_TIMEOUT_S) -> None:
        """Start no more calls; wait until none is in flight (each ends by its deadline at the latest)."""
        self._gate.clear()
        deadline = time.monotonic() + timeout_s
        while self.in_flight:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.in_flight} quota calls still in flight {timeout_s:.0f}s after pausing")
            time.sleep(0.01)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def wait_connected(self, timeout_s: float = 15.0) -> None:
        grpc.channel_ready_future(self._channel).result(timeout=timeout_s)

    def of_kind(self, kind: str, outcome: str | None = None) -> list[Call]:
        """This kind's calls; with `outcome` "OK" the acknowledged ones, "" the unanswered, "refused" the refused."""
        with self._lock:
            calls = [c for c in self.calls.values() if c.kind == kind]
        if outcome == "refused":
            return [c for c in calls if c.outcome not in ("", "OK")]
        return calls if outcome is None else [c for c in calls if c.outcome == outcome]

    @property
    def unanswered(self) -> list[Call]:
        with self._lock:
            return [c for c in self.calls.values() if not c.outcome]

    def resend_unanswered(self, timeout_s: float = 60.0) -> int:
        """With the load paused: resend every unanswered message (same bytes) until each has an answer."""
        assert not self._gate.is_set(), "pause first"
        with self._lock:
            for queue in self._queues.values():
                queue.clear()
        deadline = time.monotonic() + timeout_s
        resent = 0
        while pending := self.unanswered:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pending)} quota calls still unanswered after {timeout_s:.0f}s of resends")
            for call in pending:
                self.send(call)
                resent += 1
            if self.unanswered:
                time.sleep(0.2)
        return resent

    def check_replays(self, sample: int) -> int:
        """Resend `sample` answered messages of each kind: each gets the very answer it got before (a replay
        with the same receipt, or the same refusal), and changes nothing."""
        chosen: list[Call] = []
        for kind in LANES:
            answered = [c for c in self.of_kind(kind) if c.outcome]
            chosen += self._random.sample(answered, min(sample, len(answered)))
        for call in chosen:
            before = len(self.stats.unexpected)
            code = self.send(call)
            assert len(self.stats.unexpected) == before, self.stats.unexpected[before:]
            assert code == call.outcome.partition("/")[0], f"{call.kind} {call.key}: resend answered {code}"
        return len(chosen)

    def close(self) -> None:
        self._stopping.set()
        self._gate.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(GRANT_CONTROL_TIMEOUT_S + 5)
        self._channel.close()


def giver_account(control: control_pb2_grpc.StubControlStub) -> None:
    """The giver's personal account, large enough that no grant of the load is refused for want of balance."""
    control.SetAccount(control_pb2.SetAccountRequest(id_number=GIVER[0], balance_fen=GIVER_BALANCE_FEN), timeout=10)
