"""One bench run: start the gateway, two stubs and the echo server, measure in phases, check, report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc.aio
import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import floor, report
from bench.checks import Database, Outcomes, Stubs, account, completed, drain
from bench.echo_server import ECHO_METHOD
from bench.load import Phase, UnaryTarget, drive, percentile
from bench.pipeline import COUNT as PIPELINE_COUNT
from bench.pipeline import KEY_BYTES
from bench.pipeline import SUBMIT as PIPELINE_SUBMIT
from bench.procs import (
    PROJECT_ROOT,
    BenchError,
    Child,
    Children,
    free_ports,
    machine_busy_ticks,
    process_cpu_seconds,
    wait_for_file,
    wait_for_health,
    wait_for_line,
)
from bench.transfers import GANSU, GIVER, RECEIVER, SUBMIT_METHOD, XINJIANG, TransferSource
from protos.gongji.v1 import operations_pb2, operations_pb2_grpc, relations_pb2, transfers_pb2
from protos.stub.v1 import control_pb2, control_pb2_grpc

DEADLINE_S = 10.0
STARTUP_TIMEOUT_S = 30.0
ECHO_WARMUP_S = 1.0
# Operators' watch streams left unread during the second transfer phase: a stalled consumer must not
# slow submissions (issue 4); the two phases' rates are compared side by side.
STALLED_WATCHERS = 4
T = TypeVar("T")
PROVINCE_NAMES = {XINJIANG: "新疆", GANSU: "甘肃"}
GATEWAY_READY = re.compile(r"gateway ready: provinces (\S+), operators (\S+)")
STUB_READY = re.compile(r"stub province \d+ serving on (\S+)")
ECHO_READY = re.compile(r"echo ready on (\S+)")
PIPELINE_READY = re.compile(r"pipeline \w+ ready on (\S+)")
FLOOR_READY = re.compile(r"floor \w+ ready on (\S+)")
PHASES = (
    "Warm-up (1 s of echo; 4×concurrency verified submissions, drained). Then echo round 1, "
    "transfer phase, drain, a second transfer phase with STALLED_WATCHERS WatchTransfers streams open "
    "from cursor 0 that are never read, drain, a third transfer phase without them, drain, the "
    "pipeline phase (the flow's five RPCs through relays that do no work, bench.pipeline), the two floor phases "
    "(the same relays doing only the contract's Ed25519 operations, then also the gateway's durable records, "
    "bench.floor), the floor's submissions alone, echo round 2; "
    "each echo round, transfer and relay phase BENCH_SECONDS long; the stalled-stream phase is compared with "
    "the mean of the two around it. All "
    "in one run on one machine; echo_rps is the median of the echo rounds (with two, their mean), so "
    "drift during the run lands on both sides of the transfer phase."
)


@dataclass(frozen=True)
class Options:
    seconds: float
    concurrency: int
    drain_timeout_s: float
    results_dir: Path
    # The gateway's GONGJI_SQLITE_SYNCHRONOUS: NORMAL (the log synced at checkpoints), as in every published
    # run; FULL, the gateway's default, adds an fsync per transaction with the event loop waiting on it.
    sqlite_synchronous: str = "NORMAL"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Options:
        """BENCH_SECONDS (20), BENCH_CONCURRENCY (32), BENCH_DRAIN_SECONDS (60), BENCH_SQLITE_SYNCHRONOUS
        (NORMAL); ValueError if bad."""
        seconds = float(env.get("BENCH_SECONDS", "20"))
        concurrency = int(env.get("BENCH_CONCURRENCY", "32"))
        drain_timeout_s = float(env.get("BENCH_DRAIN_SECONDS", "60"))
        sqlite_synchronous = env.get("BENCH_SQLITE_SYNCHRONOUS", cls.sqlite_synchronous).upper()
        if not (0 < seconds <= 600 and 0 < concurrency <= 1024 and 0 < drain_timeout_s <= 600):
            raise ValueError(
                "BENCH_SECONDS and BENCH_DRAIN_SECONDS must be in (0, 600], BENCH_CONCURRENCY in (0, 1024]"
            )
        if sqlite_synchronous not in ("FULL", "NORMAL"):
            raise ValueError("BENCH_SQLITE_SYNCHRONOUS must be FULL or NORMAL")
        return cls(seconds, concurrency, drain_timeout_s, PROJECT_ROOT / "bench" / "results", sqlite_synchronous)


@dataclass
class Stack:
    """The started processes and where they listen."""

    children: Children
    keys_dir: Path
    db_path: Path
    gateway: str
    stubs: dict[str, str]
    stub_controls: dict[str, str]  # each stub's StubControl, on a loopback port beside its inbox
    echo: str
    operations: str
    pipeline: Relays  # bench.pipeline: the five RPCs doing no work
    floors: dict[str, Relays]  # bench.floor, by FLOORS name: the five RPCs doing the contract's least
    floor_submissions: str  # a bench.floor gateway that answers submissions and delivers nothing


@dataclass(frozen=True)
class Relays:
    """A relay gateway and its two relay provinces (bench.pipeline or bench.floor)."""

    gateway: str
    provinces: dict[str, str]


# bench.floor's two phases, by name: whether the relay gateway keeps its durable records. Both do the
# contract's Ed25519 operations; the provinces verify nothing in either: the least any implementation does.
FLOORS = {"signatures": False, "records": True}


# A load test sends thousands of transfers from one giver at any hour: the giver's province lifts the
# daily limit and the blackout (D12 policy) for the run. Everything else is the national default.
BENCH_POLICY = (
    "[provinces.policy]\ndaily_transfer_limit = 1000000\nblackout_start_minute = 0\nblackout_end_minute = 0\n"
)


def _write_manifest(path: Path, stubs: Mapping[str, str]) -> None:
    # Key files are relative to the manifest's folder (gateway/manifest.py).
    blocks = [
        f'[[provinces]]\ncode = "{code}"\nname = "{PROVINCE_NAMES[code]}"\nendpoint = "{address}"\n'
        + (BENCH_POLICY if code == XINJIANG else "")
        + f'[[provinces.keys]]\nkey_id = "{code}-k1"\npublic_key_file = "keys/{code}-k1.pub"\n'
        for code, address in stubs.items()
    ]
    path.write_text("\n".join(blocks), encoding="utf-8")


async def start_stack(children: Children, workdir: Path, sqlite_synchronous: str) -> Stack:
    """Stubs first (they create their keys), then the manifest naming them, then the gateway and echo.

    Every process is started before the bench opens its first gRPC channel: fork after gRPC has
    started its threads is unsafe.
    """
    keys_dir = workdir / "keys"
    gw_port, ops_port, xj_port, gs_port, xj_control, gs_control, echo_port, *relay_ports = free_ports(
        8 + 3 * (1 + len(FLOORS)))
    gateway = f"127.0.0.1:{gw_port}"
    stubs = {XINJIANG: f"127.0.0.1:{xj_port}", GANSU: f"127.0.0.1:{gs_port}"}
    stub_controls = {XINJIANG: f"127.0.0.1:{xj_control}", GANSU: f"127.0.0.1:{gs_control}"}
    stub_children: dict[str, Child] = {}
    for code, address in stubs.items():
        stub_children[code] = children.start(
            f"stub-{code}",
            ["-m", "province_stub", "--province", code, "--name", PROVINCE_NAMES[code], "--listen", address,
             "--control-listen", stub_controls[code], "--gateway", gateway, "--keys-dir", str(keys_dir)],
        )
    for code, child in stub_children.items():
        await wait_for_line(child, STUB_READY, STARTUP_TIMEOUT_S)
        await wait_for_file(child, keys_dir / f"{code}-k1.pub", STARTUP_TIMEOUT_S)
    manifest = workdir / "manifest.toml"
    _write_manifest(manifest, stubs)
    db_path = workdir / "bench.db"
    gateway_child = children.start(
        "gateway",
        ["-m", "gateway"],
        env={
            "GONGJI_LISTEN": gateway,
            "GONGJI_OPS_LISTEN": f"127.0.0.1:{ops_port}",
            "GONGJI_METRICS_LISTEN": "127.0.0.1:0",
            "GONGJI_DATABASE_URL": f"sqlite:///{db_path}",
            "GONGJI_GATEWAY_KEY_FILE": str(keys_dir / "gateway.key"),
            "GONGJI_ID_HASH_KEY_FILE": str(keys_dir / "id-hash.key"),
            "GONGJI_DATA_KEY_FILE": str(keys_dir / "data.keys"),
            "GONGJI_MANIFEST": str(manifest),
            "GONGJI_LOG_LEVEL": "WARNING",
            # The bench measures the exchange's own work on plaintext loopback, as it did before mutual TLS
            # (a TLS run would add the handshakes and record encryption of five processes).
            "GONGJI_INSECURE_DEV_PLAINTEXT": "true",
            # The bench measures the gateway's capacity: one giver's province sends everything, unthrottled.
            "GONGJI_RATE_LIMIT_PER_SECOND": "0",
            "GONGJI_SQLITE_SYNCHRONOUS": sqlite_synchronous,  # see Options.sqlite_synchronous
        },
    )
    echo = f"127.0.0.1:{echo_port}"
    echo_child = children.start(
        "echo", ["-m", "bench.echo_server", "--listen", echo, "--max-seconds", "3600"]
    )
    # The flow's five RPCs between three relay processes that do no work (bench.pipeline), and the same
    # doing only what the contract requires (bench.floor), each set on ports of its own.
    relay_sets: dict[str, tuple[str, list[str]]] = {"pipeline": ("bench.pipeline", [])}
    for floor_name, stores_records in FLOORS.items():
        relay_sets[f"floor-{floor_name}"] = (
            "bench.floor", [f"--db={workdir / f'floor-{floor_name}.db'}"] if stores_records else [])
    addresses: dict[str, Relays] = {}
    relays: list[tuple[Child, str, re.Pattern[str]]] = []
    ports = iter(f"127.0.0.1:{port}" for port in relay_ports)
    for name, (module, gateway_args) in relay_sets.items():
        ready = PIPELINE_READY if module == "bench.pipeline" else FLOOR_READY
        relay_gateway = next(ports)
        provinces = {XINJIANG: next(ports), GANSU: next(ports)}
        addresses[name] = Relays(relay_gateway, provinces)
        relays.append((children.start(f"{name}-gateway", [
            "-m", module, "gateway", "--listen", relay_gateway, "--peer", provinces[XINJIANG],
            "--peer", provinces[GANSU], "--max-seconds", "3600", *gateway_args]), relay_gateway, ready))
        for code, address in provinces.items():
            # A floor province signs with its own key; a pipeline province signs nothing.
            code_args = ["--code", code] if module == "bench.floor" else []
            relays.append((children.start(f"{name}-{code}", [
                "-m", module, "province", "--listen", address, "--peer", relay_gateway, "--max-seconds", "3600",
                *code_args]), address, ready))
    # Submissions alone, with the records floor's work: what a submission costs by itself (report.floor_bound).
    # It delivers nothing; the peers are only what every relay's command line asks for.
    floor_submissions = next(ports)
    records = addresses["floor-records"].provinces
    relays.append((children.start("floor-submit-gateway", [
        "-m", "bench.floor", "gateway", "--listen", floor_submissions, "--submit-only",
        f"--db={workdir / 'floor-submit.db'}", "--peer", records[XINJIANG], "--peer", records[GANSU],
        "--max-seconds", "3600"]), floor_submissions, FLOOR_READY))
    await wait_for_line(gateway_child, GATEWAY_READY, STARTUP_TIMEOUT_S)
    await wait_for_line(echo_child, ECHO_READY, STARTUP_TIMEOUT_S)
    for child, address, ready in relays:
        await wait_for_line(child, ready, STARTUP_TIMEOUT_S)
        await wait_for_health(child, address, STARTUP_TIMEOUT_S)
    await wait_for_health(gateway_child, gateway, STARTUP_TIMEOUT_S)
    await wait_for_health(gateway_child, f"127.0.0.1:{ops_port}", STARTUP_TIMEOUT_S)
    for code, child in stub_children.items():
        await wait_for_health(child, stubs[code], STARTUP_TIMEOUT_S)
    await wait_for_health(echo_child, echo, STARTUP_TIMEOUT_S)
    return Stack(children, keys_dir, db_path, gateway, stubs, stub_controls, echo, f"127.0.0.1:{ops_port}",
                 addresses["pipeline"], {name: addresses[f"floor-{name}"] for name in FLOORS}, floor_submissions)


class CpuMeter:
    """CPU seconds of every process (the bench itself included) and the machine, per phase."""

    def __init__(self, children: Children) -> None:
        self._children = children
        self.phases: dict[str, dict[str, Any]] = {}
        self._mark: tuple[float, dict[str, float], tuple[int, int]] | None = None

    def _sample(self) -> dict[str, float]:
        sample = {child.name: child.cpu_seconds() for child in self._children.started}
        sample["driver"] = process_cpu_seconds(os.getpid())
        return sample

    async def phase(self, name: str, work: Awaitable[T]) -> T:
        """Await `work`, its CPU counted as phase `name`."""
        self.start()
        result = await work
        self.stop(name)
        return result

    def start(self) -> None:
        self._mark = (time.monotonic(), self._sample(), machine_busy_ticks())

    def stop(self, phase: str) -> None:
        if self._mark is None:
            return
        started, before, (busy0, total0) = self._mark
        wall = time.monotonic() - started
        after = self._sample()
        busy1, total1 = machine_busy_ticks()
        ours = {name: 100 * (after[name] - before.get(name, 0.0)) / wall for name in after}
        busy_percent = 100 * (busy1 - busy0) / max(1, total1 - total0)
        self.phases[phase] = {
            "seconds": round(wall, 2),
            # 100 = one core fully busy; on 2 cores the sum can reach 200.
            "process_percent_of_one_core": {name: round(value, 1) for name, value in ours.items()},
            "machine_busy_percent": round(busy_percent, 1),
            # Whatever else ran on the machine meanwhile (other people's tests): the noise to judge by.
            "others_percent_of_one_core": round(max(0.0, busy_percent * (os.cpu_count() or 1) - sum(ours.values())), 1),
        }
        self._mark = None


def _echo_summary(phase: Phase) -> dict[str, Any]:
    return {
        "rps": round(phase.rate, 1),
        "calls": len(phase.calls),
        "errors": phase.errors,
        "error_codes": phase.error_codes,
        "p50_ms": round(phase.latency_ms(50), 2),
        "p99_ms": round(phase.latency_ms(99), 2),
        "elapsed_s": round(phase.elapsed_s, 3),
        "started_at": phase.started_at,
    }


def _lifecycle(phase: Phase, outcomes: Mapping[str, Outcomes]) -> dict[str, Any]:
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
        "lifecycle_tps": done_in_window / phase.window_s,
        "lifecycle_tps_drained": len(latencies) / drained_span if drained_span > 0 else 0.0,
        "lifecycle_completed_in_window": done_in_window,
        "lifecycle_completed": len(latencies),
        "lifecycle_p50_ms": percentile(latencies, 50),
        "lifecycle_p99_ms": percentile(latencies, 99),
    }


async def bind_giver_and_receiver(stack: Stack) -> str:
    """Transfers need an ACTIVE binding (D10): Xinjiang proposes, Gansu's stub consents by itself."""
    async with grpc.aio.insecure_channel(stack.stub_controls[XINJIANG]) as channel:
        control = control_pb2_grpc.StubControlStub(channel)
        answer = await control.ProposeBinding(control_pb2.StubProposeRequest(
            giver_id_number=GIVER.id_number, receiver_id_number=RECEIVER.id_number,
            receiver_pooling_area=RECEIVER.pooling_area, receiver_province=GANSU, relation_code="52"), timeout=10)
        if answer.code != "OK":
            raise BenchError(f"proposing the bench's binding failed: {answer.code} {answer.reason}")
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            view = await control.QueryBinding(control_pb2.QueryBindingRequest(binding_id=answer.subject_id), timeout=5)
            if view.binding.state == relations_pb2.BINDING_STATE_ACTIVE:
                return answer.subject_id
            await asyncio.sleep(0.05)
    raise BenchError("the bench's binding did not become ACTIVE")


# Ed25519 operations the contract requires per lifecycle (api.md): signatures — the instruction, its
# receipt, the delivery, the confirmation, its receipt, two outcome notifications; verifications — the
# instruction (gateway), the delivery and the instruction inside it (receiver), the confirmation
# (gateway), its receipt (receiver), each outcome notification (both provinces). The bench's driver
# checks receipts only while warming up, so the giver's check of its receipt is not counted.
SIGNATURES_PER_LIFECYCLE = 7
VERIFICATIONS_PER_LIFECYCLE = 7
CRYPTO_ROUNDS = 2000


def measure_ed25519(payload: bytes) -> dict[str, float]:
    """Median µs of one Ed25519 signature and one verification (cryptography, this process, one core)."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    signature = key.sign(payload)
    signs: list[float] = []
    verifies: list[float] = []
    for _ in range(CRYPTO_ROUNDS):
        t0 = time.perf_counter()
        key.sign(payload)
        t1 = time.perf_counter()
        public.verify(signature, payload)
        t2 = time.perf_counter()
        signs.append(t1 - t0)
        verifies.append(t2 - t1)
    return {"sign_us": round(1e6 * statistics.median(signs), 1),
            "verify_us": round(1e6 * statistics.median(verifies), 1)}


async def measured_phase(cpu: CpuMeter, options: Options, name: str, target: UnaryTarget[Any, Any],
                         next_request: Callable[[], tuple[str, Any]], check: Callable[[Any], str]) -> Phase:
    """One measured phase: `drive` at BENCH_CONCURRENCY for BENCH_SECONDS, its CPU counted as `name`."""
    return await cpu.phase(name, drive(name, target, next_request, check,
                                       concurrency=options.concurrency, seconds=options.seconds))


PIPELINE_SETTLE_S = 3.0  # after the window: notifications still on their way are counted by arrival time


def relay_requests(request_bytes: int, signed: bool) -> Callable[[], tuple[str, bytes]]:
    """Requests of the echo's size, each with a key of its own: plain bytes for bench.pipeline, an
    instruction signed by the giver's province (in the driver, as the transfer phases sign theirs) for
    bench.floor."""
    counter = iter(range(1 << 62))

    def next_request() -> tuple[str, bytes]:
        key = next(counter).to_bytes(KEY_BYTES, "big")
        if signed:
            return key.hex(), floor.instruction(key, request_bytes)
        return key.hex(), key + bytes(max(0, request_bytes - KEY_BYTES))

    return next_request


async def relay_phase(name: str, relays: Relays, options: Options, cpu: CpuMeter,
                      next_request: Callable[[], tuple[str, bytes]]) -> dict[str, Any]:
    """The flow's five RPCs through a set of relays (bench.pipeline or bench.floor), driven like the
    transfers (same `drive`), counted by what reached both provinces within the window."""
    channel = grpc.aio.insecure_channel(relays.gateway)
    province_channels = {code: grpc.aio.insecure_channel(address) for code, address in relays.provinces.items()}
    identity: Any = bytes
    try:
        submit: UnaryTarget[bytes, bytes] = UnaryTarget(channel, PIPELINE_SUBMIT, identity, identity, DEADLINE_S)
        phase = await measured_phase(cpu, options, name, submit, next_request, lambda answer: "OK")
        await asyncio.sleep(PIPELINE_SETTLE_S)
        window = struct.pack("<dd", phase.started_at, phase.started_at + phase.window_s)
        counts: dict[str, int] = {}
        failures = calls = 0
        for code, relay in [("gateway", channel), *province_channels.items()]:
            count = relay.unary_unary(PIPELINE_COUNT, request_serializer=identity, response_deserializer=identity)
            inside, served, failed = struct.unpack("<qqq", await count(window, timeout=DEADLINE_S))
            failures += failed
            calls += served
            if code != "gateway":
                counts[code] = inside
    finally:
        await channel.close(None)
        for province_channel in province_channels.values():
            await province_channel.close(None)
    return {
        "submit_tps": round(phase.rate, 1),
        "submit_p50_ms": round(phase.latency_ms(50), 2),
        # Both provinces told within the window; the giver's and the receiver's counts, the smaller.
        "lifecycle_tps": round(min(counts.values()) / phase.window_s, 1),
        "notified_in_window": counts,
        # Every call the relays served in the window: submissions run ahead of lifecycles here (nothing
        # holds them back), so the bare cost of a lifecycle is taken per call (5 calls a lifecycle).
        "calls_per_second": round(calls / phase.window_s, 1),
        "errors": phase.errors + failures,
    }


async def floor_submissions_phase(address: str, options: Options, cpu: CpuMeter,
                                  next_request: Callable[[], tuple[str, bytes]]) -> dict[str, Any]:
    """Signed submissions to a bench.floor gateway that verifies, commits and receipts them, nothing more."""
    channel = grpc.aio.insecure_channel(address)
    identity: Any = bytes
    try:
        submit: UnaryTarget[bytes, bytes] = UnaryTarget(channel, PIPELINE_SUBMIT, identity, identity, DEADLINE_S)
        phase = await measured_phase(cpu, options, "floor-submit", submit, next_request, lambda answer: "OK")
    finally:
        await channel.close(None)
    return {"submit_tps": round(phase.rate, 1), "submit_p50_ms": round(phase.latency_ms(50), 2),
            "errors": phase.errors}


async def measure(stack: Stack, options: Options, cpu: CpuMeter) -> dict[str, Any]:
    source = TransferSource(stack.keys_dir, await bind_giver_and_receiver(stack), keep_payloads=True)
    sample = source.sample_request()
    # One channel per server, as a province platform would hold one to the gateway.
    gateway_channel = grpc.aio.insecure_channel(stack.gateway)
    echo_channel = grpc.aio.insecure_channel(stack.echo)
    stubs = Stubs(stack.stub_controls)
    try:
        submit: UnaryTarget[transfers_pb2.SubmitTransferRequest, transfers_pb2.SubmitTransferResponse] = (
            UnaryTarget(gateway_channel, SUBMIT_METHOD,
                        transfers_pb2.SubmitTransferRequest.SerializeToString,
                        transfers_pb2.SubmitTransferResponse.FromString, DEADLINE_S)
        )
        # The echo carries a real signed submit request through the same serialisation, both ways.
        echo: UnaryTarget[transfers_pb2.SubmitTransferRequest, transfers_pb2.SubmitTransferRequest] = (
            UnaryTarget(echo_channel, ECHO_METHOD,
                        transfers_pb2.SubmitTransferRequest.SerializeToString,
                        transfers_pb2.SubmitTransferRequest.FromString, DEADLINE_S)
        )

        def echo_request() -> tuple[str, transfers_pb2.SubmitTransferRequest]:
            return "", sample

        def echo_check(answer: transfers_pb2.SubmitTransferRequest) -> str:
            return "OK" if answer.instruction.signature == sample.instruction.signature else "ECHO_MISMATCH"

        async def echo_round(name: str) -> Phase:
            return await measured_phase(cpu, options, name, echo, echo_request, echo_check)

        print("bench: warming up", file=sys.stderr, flush=True)
        await drive("echo-warmup", echo, echo_request, echo_check,
                    concurrency=options.concurrency, seconds=ECHO_WARMUP_S)
        warmup = await drive("transfers-warmup", submit, source.next_request, source.check,
                             concurrency=options.concurrency, total_calls=4 * options.concurrency)
        await drain(stubs, [c.key for c in warmup.ok], options.drain_timeout_s)
        source.keep_payloads = False

        print(f"bench: echo round 1 ({options.seconds:g} s)", file=sys.stderr, flush=True)
        echo_rounds = [await echo_round("echo-1")]
        print(f"bench: transfers ({options.seconds:g} s, {options.concurrency} in flight)",
              file=sys.stderr, flush=True)
        transfers = await measured_phase(cpu, options, "transfers", submit, source.next_request, source.check)
        accepted = [c.key for c in warmup.ok] + [c.key for c in transfers.ok]
        print(f"bench: draining {len(accepted)} accepted transfers (at most {options.drain_timeout_s:g} s)",
              file=sys.stderr, flush=True)
        _, drain_s = await cpu.phase("drain", drain(stubs, accepted, options.drain_timeout_s))

        print(f"bench: transfers with {STALLED_WATCHERS} stalled WatchTransfers streams ({options.seconds:g} s)",
              file=sys.stderr, flush=True)
        # A client that does not grow its receive window (no BDP probing) holds each stream at one
        # flow-control window at once; with probing it would take a few MB first (tests/api/test_watch.py).
        ops_channel = grpc.aio.insecure_channel(stack.operations, options=[("grpc.http2.bdp_probe", 0)])
        operations = operations_pb2_grpc.OperationsStub(ops_channel)
        # From cursor 0: each stream has the whole run's history to send at once, and nobody reads it.
        stalled = [operations.WatchTransfers(operations_pb2.WatchTransfersRequest(from_cursor="0"))
                   for _ in range(STALLED_WATCHERS)]
        try:
            with_stalled = await measured_phase(cpu, options, "transfers-stalled-watchers", submit,
                                                source.next_request, source.check)
            stalled_accepted = [c.key for c in with_stalled.ok]
            accepted += stalled_accepted
            await drain(stubs, stalled_accepted, options.drain_timeout_s)
        finally:
            for stream in stalled:
                stream.cancel()
            await ops_channel.close(None)
        # The same load again without watchers: the database grows during the run (the giver's daily
        # count reads his rows of the day), so the phase with stalled streams is compared with the
        # mean of the phases before and after it.
        print(f"bench: transfers again, no watchers ({options.seconds:g} s)", file=sys.stderr, flush=True)
        after = await measured_phase(cpu, options, "transfers-after", submit, source.next_request, source.check)
        after_accepted = [c.key for c in after.ok]
        accepted += after_accepted
        await drain(stubs, after_accepted, options.drain_timeout_s)
        print(f"bench: the same five RPCs through relays that do no work ({options.seconds:g} s)",
              file=sys.stderr, flush=True)
        pipeline = await relay_phase("pipeline", stack.pipeline, options, cpu,
                                     relay_requests(sample.ByteSize(), signed=False))
        floors: dict[str, dict[str, Any]] = {}
        for floor_name, relays in stack.floors.items():
            print(f"bench: the floor, relays doing {report.FLOOR_PHASES[floor_name]} ({options.seconds:g} s)",
                  file=sys.stderr, flush=True)
            floors[floor_name] = await relay_phase(f"floor-{floor_name}", relays, options, cpu,
                                                   relay_requests(sample.ByteSize(), signed=True))
        print(f"bench: the floor's submissions alone ({options.seconds:g} s)", file=sys.stderr, flush=True)
        floors["submissions"] = await floor_submissions_phase(stack.floor_submissions, options, cpu,
                                                              relay_requests(sample.ByteSize(), signed=True))
        print(f"bench: echo round 2 ({options.seconds:g} s)", file=sys.stderr, flush=True)
        echo_rounds.append(await echo_round("echo-2"))

        ed25519 = measure_ed25519(sample.instruction.payload)
        # The end of the run: late redeliveries during echo round 2 are caught too.
        outcomes = await stubs.outcomes()
        # A process that died during the run makes every figure meaningless.
        for child in stack.children.started:
            child.check_alive()
        database = Database.read(stack.db_path)
    finally:
        await stubs.close()
        await gateway_channel.close(None)
        await echo_channel.close(None)

    accounting = account(source.submitted, set(accepted), database, outcomes)
    echo_rps = statistics.median(phase.rate for phase in echo_rounds)
    lifecycle = _lifecycle(transfers, outcomes)
    stalled_lifecycle = _lifecycle(with_stalled, outcomes)
    submit_tps = transfers.rate
    all_calls = warmup.calls + transfers.calls + with_stalled.calls + after.calls
    bracket_tps = (transfers.rate + after.rate) / 2
    error_codes: dict[str, int] = {}
    for call in all_calls:
        if call.code != "OK":
            error_codes[call.code] = error_codes.get(call.code, 0) + 1
    return {
        "echo_rps": round(echo_rps, 1),
        "submit_tps": round(submit_tps, 1),
        "submit_p50_ms": round(transfers.latency_ms(50), 2),
        "submit_p99_ms": round(transfers.latency_ms(99), 2),
        "lifecycle_tps": round(lifecycle["lifecycle_tps"], 1),
        "lifecycle_p50_ms": round(lifecycle["lifecycle_p50_ms"], 1),
        "lifecycle_p99_ms": round(lifecycle["lifecycle_p99_ms"], 1),
        "lifecycle_tps_drained": round(lifecycle["lifecycle_tps_drained"], 1),
        "submit_ratio": round(submit_tps / echo_rps, 4) if echo_rps else 0.0,
        "lifecycle_ratio": round(lifecycle["lifecycle_tps"] / echo_rps, 4) if echo_rps else 0.0,
        "stalled_watchers": STALLED_WATCHERS,
        "stalled_watchers_submit_tps": round(with_stalled.rate, 1),
        "stalled_watchers_lifecycle_tps": round(stalled_lifecycle["lifecycle_tps"], 1),
        "submit_tps_after": round(after.rate, 1),
        # Submissions with unread watch streams open, over the mean of the phases without, before and after.
        "stalled_watchers_submit_ratio": round(with_stalled.rate / bracket_tps, 3) if bracket_tps else 0.0,
        # The ceiling of the flow itself: its five RPCs between the same processes doing no work.
        "pipeline_submit_tps": pipeline["submit_tps"],
        "pipeline_lifecycle_tps": pipeline["lifecycle_tps"],
        "pipeline_lifecycle_ratio": round(pipeline["lifecycle_tps"] / echo_rps, 4) if echo_rps else 0.0,
        "lifecycle_share_of_pipeline": (round(lifecycle["lifecycle_tps"] / pipeline["lifecycle_tps"], 3)
                                        if pipeline["lifecycle_tps"] else 0.0),
        "pipeline": pipeline,
        # The least any implementation of the contract does, through the same five RPCs (bench.floor).
        **{f"floor_{floor_name}_{key}_ratio": round(figures[f"{key}_tps"] / echo_rps, 4) if echo_rps else 0.0
           for floor_name, figures in floors.items() if floor_name in FLOORS for key in ("submit", "lifecycle")},
        "floor": floors,
        "ed25519": {**ed25519, "signatures_per_lifecycle": SIGNATURES_PER_LIFECYCLE,
                    "verifications_per_lifecycle": VERIFICATIONS_PER_LIFECYCLE},
        "errors": sum(error_codes.values()),
        "error_codes": error_codes,
        "lost": accounting.lost,
        "duplicated": accounting.duplicated,
        "redelivered": accounting.redelivered,
        "lost_detail": accounting.lost_detail,
        "duplicated_detail": accounting.duplicated_detail,
        "redelivered_detail": accounting.redelivered_detail,
        "outbox_pending": accounting.outbox_pending,
        "outbox_status": accounting.outbox_status,
        "db_transfer_states": accounting.db_states,
        "stub_credit_status": accounting.stub_credit_status,
        "refused_but_stored": accounting.refused_but_stored,
        "submitted": len(source.submitted),
        "accepted": len(accepted),
        "measured_submitted": len(transfers.calls),
        "measured_accepted": len(transfers.ok),
        "warmup_submitted": len(warmup.calls),
        "lifecycle_completed_in_window": lifecycle["lifecycle_completed_in_window"],
        "lifecycle_completed": lifecycle["lifecycle_completed"],
        "transfer_window_started_at": transfers.started_at,
        "transfer_elapsed_s": round(transfers.elapsed_s, 3),
        "drain_s": round(drain_s, 2),
        "echo_rounds": [_echo_summary(phase) for phase in echo_rounds],
        "echo_request_bytes": sample.ByteSize(),
        "cpu": cpu.phases,
    }


METHOD = {
    "phases": PHASES,
    "client": "Both loads run in the bench process through bench.load.drive: one grpc.aio channel per server, "
    "`concurrency` coroutines each awaiting one unary call at a time (closed loop), protobuf "
    "SubmitTransferRequest serialisation, a deadline of 10 s.",
    "echo": "A separate process (bench.echo_server): grpc.aio server, one generic unary method with identity "
    "(de)serialisers answering the request bytes, no interceptor. Request = one real signed "
    "SubmitTransferRequest, deserialised on return.",
    "submit": "Every call carries a fresh Ed25519-signed TransferInstruction from Xinjiang (650000) to Gansu "
    "(620000), 100 fen, unique transfer_id, created_at = now; signed before the clock starts. OK = "
    "status OK, not a replay, state RECEIVED, receipt signed by the gateway (fully verified during "
    "warm-up). submit_tps = OK answers / time from the window start until the last call returned.",
    "lifecycle": "Lifecycle latency = max(COMMITTED notification first received_at at 650000, at 620000) − "
    "the submit call's start (wall clock, same machine). lifecycle_tps = measured submissions whose "
    "both notifications arrived within the submit window [start, start + BENCH_SECONDS], divided by "
    "BENCH_SECONDS. lifecycle_tps_drained = all completed / (last completion − window start). "
    "Percentiles are nearest-rank over completed transfers.",
    "accounting": "At the end of the run (after echo round 2): the gateway's SQLite file read-only and both "
    "stubs' StubControl.Snapshot. lost = accepted submissions not in the DB, not COMMITTED, or not "
    "told COMMITTED to both provinces. duplicated = doubled effects: DB transfers never submitted, "
    "more than one COMMITTED event, more than one outbox message of one kind to one province about one "
    "transfer, a credit held twice or for an unknown transfer, two distinct outcome messages for one "
    "transfer at one province. redelivered = the same message arriving again (times_received > 1, "
    "deliveries beyond credits): legitimate at-least-once delivery, de-duplicated by message_id.",
    "pipeline": "The lifecycle's ceiling: bench.pipeline's relay gateway and two relay provinces (bare grpc.aio "
    "processes on uvloop like the echo server) pass a request of the echo's size along the transfer's path — "
    "Submit to the gateway, Deliver to Gansu, Confirm back, Notify to both — each hop answering at once and "
    "making the next call in its own task; nothing signed, stored or checked. Driven by the same `drive`. "
    "pipeline_lifecycle_tps = requests whose notification reached both provinces within the window / "
    "BENCH_SECONDS (counts read 3 s after the window). lifecycle_share_of_pipeline = lifecycle_tps / "
    "pipeline_lifecycle_tps.",
    "floor": "The least any implementation of the contract costs: bench.floor's relays (bare grpc.aio processes "
    "on uvloop, as the pipeline's) on the same path, now doing only the contract's irreducible work — the driver "
    "signs each instruction (Ed25519, cryptography); the gateway verifies it, signs a receipt, signs its "
    "envelope on the delivery, verifies the receiver's signed confirmation, signs a receipt and signs one "
    "notification per province; the provinces verify nothing. Phase 'signatures' stores nothing; phase "
    "'records' also commits the gateway's idempotency key and transfer before each answer (sqlite3, WAL, "
    "synchronous=NORMAL) and the acknowledgements in batches. No validation, bindings, limits, audit, encryption, "
    "outbox or logs. Counted as the pipeline; floor_<phase>_<submit|lifecycle>_ratio = its rate / echo_rps. "
    "Phase 'submissions': the records floor's gateway answering submissions and delivering nothing, for "
    "floor_bound: CPU per submission there (gateway + driver) and per lifecycle in phase 'records' (all four "
    "processes, per submission) give the cores that both targets at once would need if an implementation did "
    "only the floor's work and scheduled it perfectly (submissions first, the rest of each lifecycle after).",
    "ed25519": "Median µs of one Ed25519 signature and one verification (cryptography) over 2,000 rounds in the "
    "bench's own process after the last phase; the contract's operations per lifecycle are counted in bench.run.",
    "budget": "bench.report.budget: at lifecycle_ratio's target every process together has nproc × 1000 ms of "
    "CPU per second; less the pipeline phase's CPU per lifecycle (bare RPCs) and the contract's Ed25519 "
    "operations, the rest is what storage and logic may cost, set against the transfer phase's CPU per "
    "lifecycle less the same two. The same for the gateway process alone on one core.",
    "cpu": "CPU seconds per process from /proc/<pid>/stat over each phase, as % of one core; "
    "machine_busy_percent from /proc/stat over all cores.",
}


async def run(options: Options) -> dict[str, Any]:
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    machine = report.machine()
    workdir = Path(tempfile.mkdtemp(prefix="gongji-bench-"))
    children = Children(workdir / "logs")
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        # SIGTERM cancels the run like Ctrl-C does, so the finally below still stops every child.
        loop.add_signal_handler(15, task.cancel)
    try:
        print(f"bench: starting gateway, stubs and echo server in {workdir}", file=sys.stderr, flush=True)
        stack = await start_stack(children, workdir, options.sqlite_synchronous)
        figures = await measure(stack, options, CpuMeter(children))
    finally:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(15)
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        **figures,
        "machine": machine,
        "bench_seconds": options.seconds,
        "concurrency": options.concurrency,
        "sqlite_synchronous": options.sqlite_synchronous,
        "started_at": started_at,
        "method": METHOD,
        "targets": report.TARGETS,
    }


def main() -> int:
    try:
        options = Options.from_env()
    except ValueError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    relay_phases = 2 + len(FLOORS)
    overall_s = ((6 + relay_phases) * options.seconds + relay_phases * PIPELINE_SETTLE_S
                 + 3 * options.drain_timeout_s + 4 * STARTUP_TIMEOUT_S)
    try:
        figures = uvloop.run(asyncio.wait_for(run(options), overall_s))
    except BenchError as error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"bench: FAILED: the run took longer than {overall_s:.0f} s", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    figures["noisy_phases"] = report.noise(figures)
    figures["budget"] = report.budget(figures)
    figures["floor_bound"] = report.floor_bound(figures)
    path = report.write(figures, options.results_dir)
    print(report.summary(figures))
    misses = report.missed(figures)
    for line in misses:
        print(f"MISSED: {line}")
    if not misses:
        print("all targets met")
    print(f"FLOOR: {report.floor_verdict(figures)}")
    for line in report.noise(figures):
        print(f"NOISY: {line}")
    print(f"written {path.relative_to(PROJECT_ROOT)}")
    return 0
