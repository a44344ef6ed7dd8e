"""The bench's phases as a table: what each runs, how long, and which figures of latest.json it yields."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc.aio

from bench import consumptions
from bench.checks import Database, Outcomes, Stubs, account, completed, drain
from bench.echo_server import ECHO_METHOD
from bench.load import Call, Phase, UnaryTarget, drive, percentile
from bench.procs import BenchError
from bench.relays import RELAY_SETTLE_S, relay_phase
from bench.transfers import GANSU, GIVER, RECEIVER, SUBMIT_METHOD, XINJIANG, TransferSource
from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import common_pb2, operations_pb2, operations_pb2_grpc, relations_pb2, transfers_pb2

if TYPE_CHECKING:
    from bench.run import CpuMeter, Options, Stack

DEADLINE_S = 10.0
ECHO_WARMUP_S = 1.0
BINDING_TIMEOUT_S = 60.0
# Operators' watch streams left unread during the second transfer phase: a stalled consumer must not
# slow submissions; the two phases' rates are compared side by side.
STALLED_WATCHERS = 4


class Session:
    """What the phases share: the started stack, the two loads, and every transfer accepted so far."""

    def __init__(self, stack: Stack, options: Options, cpu: CpuMeter, source: TransferSource) -> None:
        self.stack, self.options, self.cpu, self.source = stack, options, cpu, source
        self.sample = source.sample_request()
        # One channel per server, as a province platform would hold one to the gateway.
        self._gateway = grpc.aio.insecure_channel(stack.gateway)
        self._echo = grpc.aio.insecure_channel(stack.echo)
        self.stubs = Stubs(stack.stub_controls)
        self.submit: UnaryTarget[transfers_pb2.SubmitTransferRequest, transfers_pb2.SubmitTransferResponse] = (
            UnaryTarget(self._gateway, SUBMIT_METHOD, transfers_pb2.SubmitTransferRequest.SerializeToString,
                        transfers_pb2.SubmitTransferResponse.FromString, DEADLINE_S))
        # The echo carries a real signed submit request through the same serialisation, both ways.
        self.echo: UnaryTarget[transfers_pb2.SubmitTransferRequest, transfers_pb2.SubmitTransferRequest] = (
            UnaryTarget(self._echo, ECHO_METHOD, transfers_pb2.SubmitTransferRequest.SerializeToString,
                        transfers_pb2.SubmitTransferRequest.FromString, DEADLINE_S))
        self.accepted: list[str] = []
        self.transfer_calls: list[Call] = []
        self.echo_rounds: list[dict[str, Any]] = []

    def echo_request(self) -> tuple[str, transfers_pb2.SubmitTransferRequest]:
        return "", self.sample

    def echo_check(self, answer: transfers_pb2.SubmitTransferRequest) -> str:
        return "OK" if answer.instruction.signature == self.sample.instruction.signature else "ECHO_MISMATCH"

    async def measured(self, name: str, target: UnaryTarget[Any, Any],
                       next_request: Callable[[], tuple[str, Any]], check: Callable[[Any], str]) -> Phase:
        """`drive` at BENCH_CONCURRENCY for BENCH_SECONDS, its CPU counted as phase `name`."""
        return await self.cpu.phase(name, drive(name, target, next_request, check,
                                                concurrency=self.options.concurrency, seconds=self.options.seconds))

    async def transfers(self, name: str) -> Phase:
        phase = await self.measured(name, self.submit, self.source.next_request, self.source.check)
        self.transfer_calls += phase.calls
        self.accepted += [call.key for call in phase.ok]
        return phase

    async def drained(self, phase: Phase) -> tuple[dict[str, Outcomes], float]:
        """Wait until every transfer `phase` had accepted was told to both provinces."""
        return await drain(self.stubs, [call.key for call in phase.ok], self.options.drain_timeout_s)

    async def close(self) -> None:
        await self.stubs.close()
        await self._gateway.close(None)
        await self._echo.close(None)


def lifecycle(phase: Phase, outcomes: Mapping[str, Outcomes]) -> dict[str, Any]:
    """Submissions of `phase` whose COMMITTED reached both provinces: within the window, and at all."""
    window_end = phase.started_at + phase.window_s
    latencies: list[float] = []
    done_in_window = 0
    last_done = phase.started_at
    for call in phase.ok:
        done = completed(outcomes, call.key)
        if done is None:
            continue
        latencies.append((done - call.started_at) * 1000)
        last_done = max(last_done, done)
        if done <= window_end:
            done_in_window += 1
    drained_span = last_done - phase.started_at
    return {
        "lifecycle_tps": round(done_in_window / phase.window_s, 1),
        "lifecycle_p50_ms": round(percentile(latencies, 50), 1),
        "lifecycle_p99_ms": round(percentile(latencies, 99), 1),
        "lifecycle_tps_drained": round(len(latencies) / drained_span if drained_span > 0 else 0.0, 1),
        "lifecycle_completed_in_window": done_in_window,
        "lifecycle_completed": len(latencies),
    }


async def warm_up(session: Session, name: str) -> dict[str, Any]:
    await drive("echo-warmup", session.echo, session.echo_request, session.echo_check,
                concurrency=session.options.concurrency, seconds=ECHO_WARMUP_S)
    warmup = await drive("transfers-warmup", session.submit, session.source.next_request, session.source.check,
                         concurrency=session.options.concurrency, total_calls=4 * session.options.concurrency)
    session.transfer_calls += warmup.calls
    session.accepted += [call.key for call in warmup.ok]
    await session.drained(warmup)
    session.source.keep_payloads = False  # receipts fully verified while warming up only
    return {"warmup_submitted": len(warmup.calls)}


async def echo_round(session: Session, name: str) -> dict[str, Any]:
    phase = await session.measured(name, session.echo, session.echo_request, session.echo_check)
    session.echo_rounds.append({
        "rps": round(phase.rate, 1), "calls": len(phase.calls), "errors": phase.errors,
        "error_codes": phase.error_codes, "p50_ms": round(phase.latency_ms(50), 2),
        "p99_ms": round(phase.latency_ms(99), 2), "elapsed_s": round(phase.elapsed_s, 3),
        "started_at": phase.started_at,
    })
    return {"echo_rounds": list(session.echo_rounds), "echo_request_bytes": session.sample.ByteSize()}


async def transfers(session: Session, name: str) -> dict[str, Any]:
    phase = await session.transfers(name)
    outcomes, drain_s = await session.cpu.phase("drain", session.drained(phase))
    return {
        "submit_tps": round(phase.rate, 1),
        "submit_p50_ms": round(phase.latency_ms(50), 2),
        "submit_p99_ms": round(phase.latency_ms(99), 2),
        **lifecycle(phase, outcomes),
        "measured_submitted": len(phase.calls),
        "measured_accepted": len(phase.ok),
        "transfer_window_started_at": phase.started_at,
        "transfer_elapsed_s": round(phase.elapsed_s, 3),
        "drain_s": round(drain_s, 2),
    }


async def transfers_with_stalled_watchers(session: Session, name: str) -> dict[str, Any]:
    # A client that does not grow its receive window (no BDP probing) holds each stream at one
    # flow-control window at once; with probing it would take a few MB first (tests/api/test_watch.py).
    channel = grpc.aio.insecure_channel(session.stack.operations, options=[("grpc.http2.bdp_probe", 0)])
    operations = operations_pb2_grpc.OperationsStub(channel)
    # From cursor 0: each stream has the whole run's history to send at once, and nobody reads it.
    stalled = [operations.WatchTransfers(operations_pb2.WatchTransfersRequest(from_cursor="0"))
               for _ in range(STALLED_WATCHERS)]
    try:
        phase = await session.transfers(name)
        outcomes, _ = await session.drained(phase)
    finally:
        for stream in stalled:
            stream.cancel()
        await channel.close(None)
    return {"stalled_watchers": STALLED_WATCHERS, "stalled_watchers_submit_tps": round(phase.rate, 1),
            "stalled_watchers_lifecycle_tps": lifecycle(phase, outcomes)["lifecycle_tps"]}


async def transfers_after(session: Session, name: str) -> dict[str, Any]:
    # The database grows during the run (the giver's daily count reads his rows of the day), so the
    # phase with stalled streams is compared with the mean of the phases before and after it.
    phase = await session.transfers(name)
    await session.drained(phase)
    return {"submit_tps_after": round(phase.rate, 1)}


async def pipeline(session: Session, name: str) -> dict[str, Any]:
    figures = await relay_phase(name, session.stack.pipeline, session.measured, session.sample.ByteSize(),
                                signed=False)
    return {"pipeline_submit_tps": figures["submit_tps"], "pipeline_lifecycle_tps": figures["lifecycle_tps"],
            "pipeline": figures}


async def floor_records(session: Session, name: str) -> dict[str, Any]:
    figures = await relay_phase(name, session.stack.floor, session.measured, session.sample.ByteSize(),
                                signed=True)
    return {"floor_submit_tps": figures["submit_tps"], "floor_lifecycle_tps": figures["lifecycle_tps"],
            "floor": figures}


async def accounting(session: Session, name: str) -> dict[str, Any]:
    # At the end of the run: late redeliveries during the last echo round are caught too.
    outcomes = await session.stubs.outcomes()
    # A process that died during the run makes every figure meaningless.
    for child in session.stack.children.started:
        child.check_alive()
    found = account(session.source.submitted, set(session.accepted), Database.read(session.stack.db_path),
                    outcomes)
    error_codes: dict[str, int] = {}
    for call in session.transfer_calls:
        if call.code != "OK":
            error_codes[call.code] = error_codes.get(call.code, 0) + 1
    return {
        "errors": sum(error_codes.values()), "error_codes": error_codes,
        "lost": found.lost, "duplicated": found.duplicated, "redelivered": found.redelivered,
        "lost_detail": found.lost_detail, "duplicated_detail": found.duplicated_detail,
        "redelivered_detail": found.redelivered_detail, "outbox_pending": found.outbox_pending,
        "outbox_status": found.outbox_status, "db_transfer_states": found.db_states,
        "stub_credit_status": found.stub_credit_status, "refused_but_stored": found.refused_but_stored,
        "submitted": len(session.source.submitted), "accepted": len(session.accepted),
    }


@dataclass(frozen=True)
class Step:
    """One row of the table: its name (also its CPU phase in latest.json), what runs, how long (windows of
    BENCH_SECONDS, seconds beyond them, drains of at most BENCH_DRAIN_SECONDS), the figures it yields."""

    name: str
    runs: str
    run: Callable[[Session, str], Awaitable[dict[str, Any]]] = field(repr=False)
    windows: int = 0
    extra_s: float = 0.0
    drains: int = 0
    yields: tuple[str, ...] = ()

    @property
    def duration(self) -> str:
        windows = "BENCH_SECONDS" if self.windows == 1 else f"{self.windows} × BENCH_SECONDS"
        parts = [*([windows] if self.windows else []), *([f"{self.extra_s:g} s"] if self.extra_s else []),
                 *(["the drain"] if self.drains else [])]
        return " + ".join(parts) or "at once"

    def longest_s(self, options: Options) -> float:
        return self.windows * options.seconds + self.extra_s + self.drains * options.drain_timeout_s


ECHO = ("echo_rps", "echo_rounds", "echo_request_bytes")
PHASES = (
    Step("warm-up", "echo, then 4 × BENCH_CONCURRENCY signed submissions with their receipts verified",
         warm_up, extra_s=ECHO_WARMUP_S, drains=1, yields=("warmup_submitted",)),
    Step("echo-1", "the echo server answering a signed submit request's bytes", echo_round, windows=1,
         yields=ECHO),
    Step("transfers", "signed transfers through the gateway and both stub provinces, the whole flow at once",
         transfers, windows=1, drains=1,
         yields=("submit_tps", "submit_p50_ms", "submit_p99_ms", "lifecycle_tps", "lifecycle_p50_ms",
                 "lifecycle_p99_ms", "lifecycle_tps_drained", "lifecycle_completed_in_window",
                 "lifecycle_completed", "submit_ratio", "lifecycle_ratio", "measured_submitted",
                 "measured_accepted", "transfer_window_started_at", "transfer_elapsed_s", "drain_s")),
    Step("transfers-stalled-watchers", f"the same with {STALLED_WATCHERS} WatchTransfers streams never read",
         transfers_with_stalled_watchers, windows=1, drains=1,
         yields=("stalled_watchers", "stalled_watchers_submit_tps", "stalled_watchers_lifecycle_tps",
                 "stalled_watchers_submit_ratio")),
    Step("transfers-after", "the same without them", transfers_after, windows=1, drains=1,
         yields=("submit_tps_after",)),
    Step("pipeline", "the flow's five RPCs through relays doing no work (bench.pipeline)", pipeline,
         windows=1, extra_s=RELAY_SETTLE_S,
         yields=("pipeline_submit_tps", "pipeline_lifecycle_tps", "pipeline_lifecycle_ratio",
                 "lifecycle_share_of_pipeline", "pipeline")),
    Step("floor-records", "the same path through relays doing only the contract's Ed25519 and the gateway's "
         "durable records (bench.floor)", floor_records, windows=1, extra_s=RELAY_SETTLE_S,
         yields=("floor_submit_tps", "floor_lifecycle_tps", "floor_submit_ratio", "floor_lifecycle_ratio",
                 "floor_share_submit", "floor_share_lifecycle", "floor")),
    Step("echo-2", "the echo again", echo_round, windows=1, yields=ECHO),
    Step("accounting", "the gateway's database and both stubs read", accounting,
         yields=("errors", "error_codes", "lost", "duplicated", "redelivered", "lost_detail", "duplicated_detail",
                 "redelivered_detail", "outbox_pending", "outbox_status", "db_transfer_states",
                 "stub_credit_status", "refused_but_stored", "submitted", "accepted")),
    Step("consumptions", f"a quota granted on the binding, then ConsumeQuota signed by the receiver's province: "
         f"{consumptions.STEADY_RATE:g} a second (open loop), then {consumptions.FLAT_OUT_CONCURRENCY} in flight "
         "(closed loop), a window each; the quota read back (bench.consumptions)", consumptions.consumptions,
         windows=2, extra_s=consumptions.READ_S, yields=consumptions.YIELDS),
)


async def bind_giver_and_receiver(stub_controls: Mapping[str, str], giver: common_pb2.PersonRef = GIVER,
                                  receiver: common_pb2.PersonRef = RECEIVER) -> str:
    """Transfers need an ACTIVE binding (D10): Xinjiang proposes, Gansu's stub consents by itself."""
    async with grpc.aio.insecure_channel(stub_controls[XINJIANG]) as channel:
        control = control_pb2_grpc.StubControlStub(channel)
        answer = await control.ProposeBinding(control_pb2.StubProposeRequest(
            giver_id_number=giver.id_number, receiver_id_number=receiver.id_number,
            receiver_pooling_area=receiver.pooling_area, receiver_province=GANSU, relation_code="52"),
            timeout=BINDING_TIMEOUT_S)  # a machine busy with others can take more than seconds
        if answer.code != "OK":
            raise BenchError(f"proposing the bench's binding failed: {answer.code} {answer.reason}")
        deadline = time.monotonic() + BINDING_TIMEOUT_S
        while time.monotonic() < deadline:
            view = await control.QueryBinding(control_pb2.QueryBindingRequest(binding_id=answer.subject_id),
                                              timeout=BINDING_TIMEOUT_S)
            if view.binding.state == relations_pb2.BINDING_STATE_ACTIVE:
                return answer.subject_id
            await asyncio.sleep(0.05)
    raise BenchError("the bench's binding did not become ACTIVE")


async def measure(stack: Stack, options: Options, cpu: CpuMeter) -> dict[str, Any]:
    """Run PHASES in order; each yields only figures its row names (the ratios come after, in report)."""
    binding_id = await bind_giver_and_receiver(stack.stub_controls)
    session = Session(stack, options, cpu, TransferSource(stack.keys_dir, binding_id, keep_payloads=True))
    figures: dict[str, Any] = {}
    try:
        for step in PHASES:
            duration = step.duration.replace("BENCH_SECONDS", f"{options.seconds:g} s")
            print(f"bench: {step.name}: {step.runs} ({duration})", file=sys.stderr, flush=True)
            found = await step.run(session, step.name)
            if unnamed := set(found) - set(step.yields):
                raise BenchError(f"phase {step.name} yields {sorted(unnamed)}, which its row does not name")
            figures |= found
    finally:
        await session.close()
    return figures
