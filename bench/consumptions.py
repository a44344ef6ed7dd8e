"""The consumption phase (issue 18 item 11): ConsumeQuota on the checkout path, signed as Gansu's platform signs it.

Xinjiang grants a quota on the bench's binding large enough for the whole phase; then a steady STEADY_RATE
consumptions a second (open loop) for a window, then as fast as FLAT_OUT_CONCURRENCY checkout counters go (closed
loop) for another. Every answer's receipt is verified (the gateway's signature, the request's SHA-256, drawn_fen
and the quota's figures). At the end the quota is read back through GetQuota, a page at a time, and from the
gateway's database: nothing over-drawn (granted = consumed + released + available, consumed = the sum of what
was drawn) and nothing lost (every answered consumption listed and stored once, with what its answer drew).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import math
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc.aio
from google.protobuf import message as protobuf_message

from bench.load import REFUSED_STREAM, Phase, UnaryTarget, drive, drive_at_rate, percentile
from bench.procs import BenchError
from bench.report import uptime
from bench.transfers import GANSU, GIVER, RECEIVER, XINJIANG
from protos.gongji.v1 import common_pb2, payload_types, quotas_pb2, quotas_pb2_grpc
from province_stub.messages import header, new_message_id
from province_stub.signing import GATEWAY_SIGNER, PublicKeyStore, load_private_key, sign_envelope, verify_with_store
from scripts.idgen import opaque_ref

if TYPE_CHECKING:
    from bench.phases import Session

CONSUME_METHOD = "/gongji.v1.Quotas/ConsumeQuota"
DEADLINE_S = 10.0
STEADY_RATE = 100.0  # consumptions a second, the checkout load
FLAT_OUT_CONCURRENCY = 8  # a few checkout counters, each waiting for its answer before the next bill
AMOUNT_FEN = 100  # drawn per bill: what the own account did not cover
OWN_ACCOUNT_USED_FEN = 2_000  # the own account paid first and is used up (own_account_balance_fen 0)
# The grant covers both halves as if the flat-out one ran at this rate, several times what this machine does:
# a QUOTA_EXCEEDED would measure the grant, not the gateway.
RATE_COVERED = 5_000
WARMUP_CALLS = 4 * FLAT_OUT_CONCURRENCY
# The gateway allows 100 streams at once on a connection (gateway/app.py); at 100 a second a stall of a second
# reaches it. Beyond this many in flight the steady half's calls wait in the driver, their latency running.
MAX_IN_FLIGHT = 64
# A call whose HTTP/2 stream the gateway refused anyway was not processed: the platform sends the same bytes
# again after a pause, this often in all.
SEND_ATTEMPTS = 3
RESEND_PAUSE_S = 0.05
PAGE_SIZE = 200  # GetQuota's largest page
# The quota read after the phase: its pages, and the last calls' answers before it.
READ_S = 10.0

# What the phase yields (its row in bench.phases.PHASES); consume_ratio is bench.report's.
YIELDS = ("consume_p50_ms", "consume_p99_ms", "consume_tps", "consume_ratio", "consume_errors", "consume_overdrawn",
          "consume_lost", "consume_error_codes", "consume_overdrawn_detail", "consume_lost_detail",
          "consume_stored_but_refused", "consume_resent", "consume_steady", "consume_max", "consume_quota",
          "uptime_before_consumptions")


class Resending:
    """The platform's calls: the same signed bytes sent again (at most SEND_ATTEMPTS in all) while HTTP/2 refuses
    the stream, a call the gateway never saw; any other answer is the gateway's. Counts what it resent."""

    def __init__(self, target: Callable[[quotas_pb2.ConsumeQuotaRequest],
                                        Awaitable[tuple[str, quotas_pb2.ConsumeQuotaResponse | None]]]) -> None:
        self._target = target
        self.resent = 0

    async def __call__(self, request: quotas_pb2.ConsumeQuotaRequest
                       ) -> tuple[str, quotas_pb2.ConsumeQuotaResponse | None]:
        for attempt in range(1, SEND_ATTEMPTS):
            code, answer = await self._target(request)
            if not code.endswith(f"/{REFUSED_STREAM}"):
                return code, answer
            self.resent += 1
            await asyncio.sleep(RESEND_PAUSE_S * attempt)
        return await self._target(request)


def grant_size(seconds: float) -> int:
    """The quota granted: every bill of the warm-up and both halves drawn in full, the flat-out half at RATE_COVERED
    a second."""
    return AMOUNT_FEN * (WARMUP_CALLS + math.ceil((STEADY_RATE + RATE_COVERED) * seconds))


def conserved(quota: common_pb2.QuotaFigures) -> bool:
    """Q3: every figure >= 0 and granted = consumed + released + available."""
    figures = (quota.granted_fen, quota.consumed_fen, quota.released_fen, quota.available_fen)
    return min(figures) >= 0 and quota.granted_fen == quota.consumed_fen + quota.released_fen + quota.available_fen


def answer_code(answer: quotas_pb2.ConsumeQuotaResponse, receipt: common_pb2.Receipt, request_payload: bytes,
                message_id: str, granted_fen: int) -> str:
    """"OK" for a first draw of AMOUNT_FEN whose receipt (its signature already checked) binds the request and
    states what the answer states, the quota's figures conserved; otherwise what is wrong with it."""
    if answer.replay:
        return "REPLAY"
    if receipt.request_sha256 != hashlib.sha256(request_payload).digest() or receipt.request_message_id != message_id:
        return "RECEIPT_NOT_BOUND"
    if receipt.subject_id != message_id or receipt.state != "DRAWN":
        return f"RECEIPT_STATE_{receipt.state or 'NONE'}"
    if answer.drawn_fen != AMOUNT_FEN or receipt.drawn_fen != answer.drawn_fen:
        return "DRAWN_DIFFERS"
    if receipt.quota != answer.quota:
        return "FIGURES_DIFFER"
    if not conserved(answer.quota) or answer.quota.granted_fen != granted_fen:
        return "FIGURES_NOT_CONSERVED"
    return "OK"


@dataclass(frozen=True)
class Drawn:
    """An answered consumption: what it drew, and the quota's consumed figure right after it."""

    drawn_fen: int
    consumed_after_fen: int


class ConsumptionSource:
    """Gansu's platform: one new QuotaConsumption per call (fresh message_id and settlement_ref), signed."""

    def __init__(self, keys_dir: Path, binding_id: str, granted_fen: int) -> None:
        self._binding_id = binding_id
        self._private_key = load_private_key(keys_dir / f"{GANSU}-k1.key")
        self._keys = PublicKeyStore(keys_dir)
        self.granted_fen = granted_fen
        self.sent: list[str] = []
        self.answered: dict[str, Drawn] = {}
        self._payloads: dict[str, bytes] = {}  # by message id, until its answer is checked

    def next_request(self) -> tuple[str, quotas_pb2.ConsumeQuotaRequest]:
        message_id = new_message_id("bc")
        consumption = quotas_pb2.QuotaConsumption(
            header=header(message_id, GANSU, GATEWAY_SIGNER), binding_id=self._binding_id, receiver=RECEIVER,
            amount_fen=AMOUNT_FEN, allow_partial=False, kind=quotas_pb2.CONSUMPTION_KIND_PHARMACY,
            settlement_ref=opaque_ref("ST"), care_pooling_area=RECEIVER.pooling_area,
            own_account_used_fen=OWN_ACCOUNT_USED_FEN, own_account_balance_fen=0)
        payload = consumption.SerializeToString()
        self.sent.append(message_id)
        self._payloads[message_id] = payload
        envelope = sign_envelope(self._private_key, GANSU, f"{GANSU}-k1", payload_types.QUOTA_CONSUMPTION, payload)
        return message_id, quotas_pb2.ConsumeQuotaRequest(consumption=envelope)

    def check(self, answer: quotas_pb2.ConsumeQuotaResponse) -> str:
        """Every receipt fully verified, at both rates: what a province keeps as its proof of the draw."""
        if verify_with_store(self._keys, answer.receipt, signer=GATEWAY_SIGNER, payload_type=payload_types.RECEIPT):
            return "BAD_RECEIPT"
        receipt = common_pb2.Receipt()
        try:
            receipt.ParseFromString(answer.receipt.payload)
        except protobuf_message.DecodeError:
            return "BAD_RECEIPT"
        message_id = receipt.request_message_id
        payload = self._payloads.pop(message_id, None)
        if payload is None:
            return "RECEIPT_NOT_BOUND"
        code = answer_code(answer, receipt, payload, message_id, self.granted_fen)
        if code == "OK":
            self.answered[message_id] = Drawn(answer.drawn_fen, answer.quota.consumed_fen)
        return code


@dataclass
class QuotaAccount:
    """The end of the phase: over-drawn and lost, each a count with the checks behind it."""

    overdrawn: int = 0
    lost: int = 0
    overdrawn_detail: dict[str, int] = field(default_factory=dict)
    lost_detail: dict[str, int] = field(default_factory=dict)
    stored_but_refused: int = 0


def account_quota(granted_fen: int, sent: Collection[str], answered: Mapping[str, Drawn],
                  final: common_pb2.QuotaFigures, listed: Sequence[tuple[str, int]], stored: Mapping[str, int],
                  stored_figures: common_pb2.QuotaFigures) -> QuotaAccount:
    """Over-drawn: each check of the quota's figures that fails (a count of failed checks, or of the consumptions
    that fail one). Lost: the answered consumptions not listed by GetQuota exactly once with what their answer drew,
    or not stored. `listed` is GetQuota's (id, drawn) pairs, `stored` the database's drawn by id."""
    listed_drawn: dict[str, int] = {}
    listed_twice: set[str] = set()
    for consumption_id, drawn_fen in listed:
        if consumption_id in listed_drawn:
            listed_twice.add(consumption_id)
        listed_drawn[consumption_id] = drawn_fen
    sent_set = set(sent)
    steps = Counter(drawn.consumed_after_fen for drawn in answered.values())
    overdrawn = {
        "final_not_conserved": int(not conserved(final)),
        "final_granted_differs": int(final.granted_fen != granted_fen),
        # The figures GetQuota answered are those stored: the database holds no second version of them.
        "stored_figures_differ": int(stored_figures != final),
        "consumed_not_sum_of_listed": int(final.consumed_fen != sum(drawn for _, drawn in listed)),
        "consumed_not_sum_of_stored": int(final.consumed_fen != sum(stored.values())),
        "answers_beyond_grant": int(sum(drawn.drawn_fen for drawn in answered.values()) > granted_fen),
        # Each draw is one step of a serial history: two answers after the same step drew on the same figures.
        "answers_sharing_a_step": sum(count - 1 for count in steps.values()),
        "drawn_never_sent": sum(1 for consumption_id in {*listed_drawn, *stored} if consumption_id not in sent_set),
    }
    not_listed = {c for c in answered if c not in listed_drawn}
    differs = {c for c, drawn in answered.items() if c in listed_drawn and listed_drawn[c] != drawn.drawn_fen}
    twice = {c for c in answered if c in listed_twice}
    not_stored = {c for c, drawn in answered.items() if stored.get(c) != drawn.drawn_fen}
    return QuotaAccount(
        overdrawn=sum(overdrawn.values()),
        lost=len(not_listed | differs | twice | not_stored),
        overdrawn_detail=overdrawn,
        lost_detail={"not_listed": len(not_listed), "listed_drawn_differs": len(differs),
                     "listed_twice": len(twice), "not_stored_as_answered": len(not_stored)},
        # Refused (or unanswered) yet stored: not lost, the province was told no, but worth seeing.
        stored_but_refused=sum(1 for c in stored if c in sent_set and c not in answered),
    )


def stored_consumptions(db_path: Path, binding_id: str) -> tuple[dict[str, int], common_pb2.QuotaFigures]:
    """The gateway's SQLite file, read-only: the binding's consumptions (drawn by id) and its quota's figures."""
    try:
        connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
        try:
            rows = connection.execute(
                "SELECT consumption_id, drawn_fen FROM consumptions WHERE binding_id = ?", (binding_id,)).fetchall()
            quota = connection.execute(
                "SELECT granted_fen, consumed_fen, released_fen FROM quotas WHERE binding_id = ?", (binding_id,)
            ).fetchone()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise BenchError(f"reading the gateway's consumptions failed: {error}") from error
    granted, consumed, released = quota or (0, 0, 0)
    figures = common_pb2.QuotaFigures(granted_fen=granted, consumed_fen=consumed, released_fen=released,
                                      available_fen=granted - consumed - released)
    return dict(rows), figures


class Platforms:
    """The two provinces' platforms as the phase needs them: Xinjiang grants, Gansu reads the quota back."""

    def __init__(self, channel: grpc.aio.Channel, keys_dir: Path, binding_id: str) -> None:
        self._quotas = quotas_pb2_grpc.QuotasStub(channel)
        self._keys = {code: load_private_key(keys_dir / f"{code}-k1.key") for code in (XINJIANG, GANSU)}
        self._binding_id = binding_id

    def _signed(self, code: str, payload_type: str, message: Any) -> common_pb2.SignedEnvelope:
        return sign_envelope(self._keys[code], code, f"{code}-k1", payload_type, message.SerializeToString())

    async def grant(self, quota_fen: int) -> None:
        grant = quotas_pb2.QuotaGrant(header=header(new_message_id("bg"), XINJIANG, GATEWAY_SIGNER),
                                      binding_id=self._binding_id, giver=GIVER, quota_fen=quota_fen,
                                      freeze_ref=opaque_ref("FZ"))
        try:
            answer = await self._quotas.GrantQuota(quotas_pb2.GrantQuotaRequest(
                grant=self._signed(XINJIANG, payload_types.QUOTA_GRANT, grant)), timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as error:
            raise BenchError(f"granting the bench's quota failed: {error.code().name} {error.details()}") from error
        if answer.quota.available_fen != quota_fen:
            raise BenchError(f"the bench's quota is {answer.quota}, not {quota_fen} fen available")

    async def read(self) -> tuple[common_pb2.QuotaFigures, list[tuple[str, int]]]:
        """GetQuota, page after page: the figures, and every consumption listed as (id, drawn)."""
        listed: list[tuple[str, int]] = []
        token, figures = "", None
        while True:
            query = quotas_pb2.QuotaQuery(header=header(new_message_id("bq"), GANSU, GATEWAY_SIGNER),
                                          binding_id=self._binding_id, page_size=PAGE_SIZE, page_token=token)
            try:
                page = await self._quotas.GetQuota(quotas_pb2.GetQuotaRequest(
                    query=self._signed(GANSU, payload_types.QUOTA_QUERY, query)), timeout=DEADLINE_S)
            except grpc.aio.AioRpcError as error:
                raise BenchError(f"reading the bench's quota failed: {error.code().name} {error.details()}") from error
            figures = figures or page.quota
            listed += [(c.consumption_id, c.drawn_fen) for c in page.consumptions]
            token = page.next_page_token
            if not token:
                return figures, listed


def half(phase: Phase) -> dict[str, Any]:
    """One half's own figures, as latest.json keeps them."""
    return {"calls": len(phase.calls), "ok": len(phase.ok), "errors": phase.errors, "error_codes": phase.error_codes,
            "per_second": round(phase.rate, 1), "p50_ms": round(phase.latency_ms(50), 2),
            "p90_ms": round(phase.latency_ms(90), 2), "p99_ms": round(phase.latency_ms(99), 2),
            "max_ms": round(percentile([c.latency_s * 1000 for c in phase.ok], 100), 2),
            "elapsed_s": round(phase.elapsed_s, 3), "started_at": phase.started_at}


async def consumptions(session: Session, name: str) -> dict[str, Any]:
    stack, seconds = session.stack, session.options.seconds
    load = uptime()
    binding_id = session.source.binding_id
    granted = grant_size(seconds)
    # Gansu's platform holds its own channel to the gateway, as every province does.
    async with grpc.aio.insecure_channel(stack.gateway) as channel:
        platforms = Platforms(channel, stack.keys_dir, binding_id)
        await platforms.grant(granted)
        source = ConsumptionSource(stack.keys_dir, binding_id, granted)
        target = Resending(UnaryTarget(channel, CONSUME_METHOD, quotas_pb2.ConsumeQuotaRequest.SerializeToString,
                                       quotas_pb2.ConsumeQuotaResponse.FromString, DEADLINE_S, with_reason=True))
        # The run's earlier objects (tens of thousands of transfer calls) out of the driver's collector: a full
        # collection walking them would pause the driver and count against the gateway's latency.
        gc.collect()
        gc.freeze()
        try:
            # The path's first calls (statements prepared, caches filled) are not what a checkout waits for.
            warmup = await drive(f"{name}-warmup", target, source.next_request, source.check,
                                 concurrency=FLAT_OUT_CONCURRENCY, total_calls=WARMUP_CALLS)
            steady = await session.cpu.phase(f"{name}-steady", drive_at_rate(
                f"{name}-steady", target, source.next_request, source.check, rate=STEADY_RATE, seconds=seconds,
                max_in_flight=MAX_IN_FLIGHT))
            flat_out = await session.cpu.phase(f"{name}-max", drive(
                f"{name}-max", target, source.next_request, source.check, concurrency=FLAT_OUT_CONCURRENCY,
                seconds=seconds))
        finally:
            gc.unfreeze()
        final, listed = await platforms.read()
    stored, stored_figures = stored_consumptions(stack.db_path, binding_id)
    found = account_quota(granted, source.sent, source.answered, final, listed, stored, stored_figures)
    halves = (warmup, steady, flat_out)
    error_codes = sum((Counter(phase.error_codes) for phase in halves), Counter[str]())
    return {
        "consume_p50_ms": round(steady.latency_ms(50), 2),
        "consume_p99_ms": round(steady.latency_ms(99), 2),
        "consume_tps": round(flat_out.rate, 1),
        "consume_errors": sum(phase.errors for phase in halves),
        "consume_overdrawn": found.overdrawn,
        "consume_lost": found.lost,
        "consume_error_codes": dict(error_codes),
        "consume_overdrawn_detail": found.overdrawn_detail,
        "consume_lost_detail": found.lost_detail,
        "consume_stored_but_refused": found.stored_but_refused,
        "consume_resent": target.resent,
        "consume_steady": {"rate": STEADY_RATE, "max_lag_ms": round(steady.max_lag_s * 1000, 2), **half(steady)},
        "consume_max": {"concurrency": FLAT_OUT_CONCURRENCY, **half(flat_out)},
        "consume_quota": {"granted_fen": final.granted_fen, "consumed_fen": final.consumed_fen,
                          "released_fen": final.released_fen, "available_fen": final.available_fen,
                          "consumptions_listed": len(listed), "consumptions_stored": len(stored),
                          "amount_fen": AMOUNT_FEN, "warmup_calls": len(warmup.calls)},
        "uptime_before_consumptions": load,
    }
