"""What `make bench-scale` measures on a seeded gateway: the provinces' steady traffic, the operators' scrapes and
reads beside it, and a settlement close under it."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc.aio

from bench.checks import Stubs, completed
from bench.load import Call, UnaryTarget, percentile
from bench.transfers import SUBMIT_METHOD, XINJIANG, XINJIANG_KEY_ID, Pair, TransferSource
from protos.gongji.v1 import operations_pb2, operations_pb2_grpc, settlements_pb2, transfers_pb2, transfers_pb2_grpc
from province_stub.messages import ProvinceSigner
from province_stub.signing import load_private_key

DEADLINE_S = 10.0
DRAIN_S = 30.0  # the longest wait for the last lifecycles of a phase to reach both provinces
METRICS_EVERY_S, SNAPSHOT_EVERY_S, STATS_EVERY_S = 1.0, 2.0, 5.0
READS = 10  # times each operators' read is made in the reads phase
WATCH_BACK = 300  # changes a resumed watch is behind the end
WATCH_DEADLINE_S = 30.0


def ms(values: list[float], percent: float | None = None) -> float:
    """Median (or a percentile) of seconds, in ms, rounded; 0.0 for none."""
    if not values:
        return 0.0
    value = statistics.median(values) if percent is None else percentile(values, percent)
    return round(1000 * value, 2)


def rss_mb(pid: int) -> float:
    """A process's resident memory, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


@dataclass
class Endpoints:
    gateway: str
    operations: str
    web: str  # http://127.0.0.1:port
    stub_controls: dict[str, str]
    keys_dir: Path
    binding_id: str
    pairs: tuple[Pair, ...] = ()  # whose transfers the traffic submits, in turn (else the binding's pair)


@dataclass
class Traffic:
    """Provinces' submissions at a steady rate (open loop: one every 1/rate s, whatever the answers), each
    transfer's lifecycle timed from its submission to the last province told COMMITTED."""

    endpoints: Endpoints
    rate: float
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.source = TransferSource(self.endpoints.keys_dir, self.endpoints.binding_id, pairs=self.endpoints.pairs)
        self.channel = grpc.aio.insecure_channel(self.endpoints.gateway)
        self.submit: UnaryTarget[Any, Any] = UnaryTarget(
            self.channel, SUBMIT_METHOD, transfers_pb2.SubmitTransferRequest.SerializeToString,
            transfers_pb2.SubmitTransferResponse.FromString, DEADLINE_S)
        self.stubs = Stubs(self.endpoints.stub_controls)

    async def run(self, seconds: float) -> list[Call]:
        """Submit for `seconds`; the calls made (all answered)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        calls: list[Call] = []

        async def one() -> None:
            key, request = self.source.next_request()
            started_at, t0 = time.time(), time.perf_counter()
            code, answer = await self.submit(request)
            if answer is not None:
                code = self.source.check(answer)
            calls.append(Call(key, started_at, time.perf_counter() - t0, code))

        for index in range(round(seconds * self.rate)):
            await asyncio.sleep(max(0.0, start + index / self.rate - loop.time()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        self.calls.extend(calls)
        return calls

    async def lifecycles(self, calls: list[Call]) -> tuple[list[float], int]:
        """Each accepted call's lifecycle (s), waiting up to DRAIN_S for the last; and how many never completed."""
        accepted = [call for call in calls if call.code == "OK"]
        deadline = time.monotonic() + DRAIN_S
        while True:
            outcomes = await self.stubs.outcomes()
            done = {call.key: at for call in accepted if (at := completed(outcomes, call.key)) is not None}
            if len(done) == len(accepted) or time.monotonic() > deadline:
                return [done[call.key] - call.started_at for call in accepted if call.key in done], \
                    len(accepted) - len(done)
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self.stubs.close()
        await self.channel.close(None)


def figures(prefix: str, calls: list[Call], lifecycles: list[float], incomplete: int) -> dict[str, Any]:
    ok = [call.latency_s for call in calls if call.code == "OK"]
    return {f"submit_p50_ms_{prefix}": ms(ok, 50), f"submit_p99_ms_{prefix}": ms(ok, 99),
            f"lifecycle_p50_ms_{prefix}": ms(lifecycles, 50), f"lifecycle_p99_ms_{prefix}": ms(lifecycles, 99),
            f"submitted_{prefix}": len(calls), f"errors_{prefix}": len(calls) - len(ok),
            f"incomplete_{prefix}": incomplete}


# What a probe may meet on a machine busy with others: its answer is then left out of the latencies and counted.
PROBE_ERRORS = (grpc.aio.AioRpcError, OSError, TimeoutError, subprocess.TimeoutExpired)


async def _timed(work: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    await work()
    return time.perf_counter() - t0


async def _every(period_s: float, until: float, probe: Callable[[], Awaitable[float]], out: list[float],
                 failures: list[str], first_after_s: float = 0.0) -> None:
    """Run `probe` every `period_s` (from the end of the last), the first after `first_after_s`, until the loop
    time `until`; a failed probe is counted in `failures`, not timed."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(first_after_s)
    while loop.time() < until:
        try:
            out.append(await probe())
        except PROBE_ERRORS as error:
            failures.append(_error(error))
        await asyncio.sleep(max(0.0, min(period_s, until - loop.time())))


def _error(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"[:200]
    return f"{type(error).__name__}: {error}"[:200]


class Operators:
    """The operators' side: /metrics, the dashboard's snapshot, GetStats, `gongji stats`, reads, the close."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self.channel = grpc.aio.insecure_channel(endpoints.operations,
                                                 options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        self.ops = operations_pb2_grpc.OperationsStub(self.channel)
        self.gateway_channel = grpc.aio.insecure_channel(endpoints.gateway)
        self.transfers = transfers_pb2_grpc.TransfersStub(self.gateway_channel)
        self.failures: dict[str, list[str]] = defaultdict(list)  # by kind of probe
        self.signer = ProvinceSigner(XINJIANG, XINJIANG_KEY_ID,
                                     load_private_key(endpoints.keys_dir / f"{XINJIANG_KEY_ID}.key"))

    async def http(self, path: str) -> float:
        def get() -> None:
            with urllib.request.urlopen(self.endpoints.web + path, timeout=DEADLINE_S) as answer:
                answer.read()
        return await _timed(lambda: asyncio.to_thread(get))

    async def stats(self) -> float:
        return await _timed(lambda: self.ops.GetStats(operations_pb2.GetStatsRequest(), timeout=DEADLINE_S))

    async def stats_cli(self, niceness: str | None = None) -> float:
        """`gongji stats` as an operator runs it (its own process: start-up included), at the priority it gives
        itself, or with GONGJI_CLI_NICE=`niceness`. Started by subprocess in a thread (vfork and exec), not by
        the event loop's fork, which this process's gRPC threads make unsafe."""
        command = [sys.executable, "-c", "from gateway.cli import main; main()", "stats", "--ops",
                   self.endpoints.operations]
        env = {key: value for key, value in os.environ.items() if key != "GONGJI_CLI_NICE"}
        env["GONGJI_INSECURE_DEV_PLAINTEXT"] = "true"  # as the bench's gateway speaks
        if niceness is not None:
            env["GONGJI_CLI_NICE"] = niceness
        t0 = time.perf_counter()
        done = await asyncio.to_thread(subprocess.run, command, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, timeout=60, check=False)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise OSError(f"exit {done.returncode}: {done.stderr.decode(errors='replace')[-160:]}")
        return elapsed

    async def scrape(self, seconds: float, cli: bool = True, cli_niceness: str | None = None
                     ) -> dict[str, list[float]]:
        """The continuous scrape: /metrics every 1 s, the dashboard's snapshot every 2 s, GetStats and `gongji
        stats` every 5 s, for `seconds`; without `cli`, the gateway's own three alone (no process started);
        `cli_niceness` sets GONGJI_CLI_NICE for the command."""
        until = asyncio.get_running_loop().time() + seconds
        found: dict[str, list[float]] = {"metrics": [], "snapshot": [], "stats": [], "stats_cli": []}
        failed = self.failures
        # Staggered, as independent clients would be: GetStats is timed away from the CLI's start-up (a second of
        # Python's CPU on the same two cores).
        await asyncio.gather(
            _every(METRICS_EVERY_S, until, lambda: self.http("/metrics"), found["metrics"], failed["metrics"]),
            _every(SNAPSHOT_EVERY_S, until, lambda: self.http("/api/snapshot"), found["snapshot"],
                   failed["snapshot"], 0.5),
            _every(STATS_EVERY_S, until, self.stats, found["stats"], failed["stats"], 2.5),
            *([_every(STATS_EVERY_S, until, lambda: self.stats_cli(cli_niceness), found["stats_cli"],
                      failed["stats_cli"])] if cli else []))
        return found

    async def reads(self, transfer_ids: list[str], last_event_id: int, times: int = READS) -> dict[str, Any]:
        """ListTransfers' newest page, InspectTransfer and the province's GetTransfer of seeded transfers, a
        WatchTransfers resumed WATCH_BACK changes before the end (until it has them all): each `times` times."""
        found: dict[str, list[float]] = {"list_newest": [], "inspect_transfer": [], "get_transfer": [],
                                         "watch_resumed": []}

        async def probe(kind: str, work: Callable[[], Awaitable[object]]) -> None:
            try:
                found[kind].append(await _timed(work))
            except PROBE_ERRORS as error:
                self.failures[kind].append(_error(error))

        for index in range(times):
            await probe("list_newest", lambda: self.ops.ListTransfers(operations_pb2.ListTransfersRequest(),
                                                                      timeout=DEADLINE_S))
            transfer_id = transfer_ids[index % len(transfer_ids)]
            await probe("inspect_transfer", lambda t=transfer_id: self.ops.InspectTransfer(  # type: ignore[misc]
                operations_pb2.InspectTransferRequest(transfer_id=t), timeout=DEADLINE_S))
            query = transfers_pb2.GetTransferRequest(query=self.signer.transfer_query_envelope(transfer_id))
            await probe("get_transfer", lambda q=query: self.transfers.GetTransfer(  # type: ignore[misc]
                q, timeout=DEADLINE_S))
            await probe("watch_resumed", lambda: self._watch(max(0, last_event_id - WATCH_BACK)))
        return {**{f"{kind}_ms_median": ms(values) for kind, values in found.items()},
                **{f"{kind}_ms_max": ms([max(values)] if values else []) for kind, values in found.items()},
                "watch_resumed_changes": WATCH_BACK}

    async def _watch(self, from_cursor: int) -> None:
        """Until WATCH_BACK changes after `from_cursor` have come (WATCH_DEADLINE_S at most)."""
        stream = self.ops.WatchTransfers(operations_pb2.WatchTransfersRequest(from_cursor=str(from_cursor)),
                                         timeout=WATCH_DEADLINE_S)
        received = 0
        try:
            async for _ in stream:
                received += 1
                if received >= WATCH_BACK:
                    return
        except grpc.aio.AioRpcError as error:
            raise TimeoutError(f"{error.code().name} after {received} of {WATCH_BACK} changes") from error
        finally:
            stream.cancel()

    async def close_window(self, window_id: str) -> tuple[float, str]:
        t0 = time.perf_counter()
        answer = await self.ops.CloseSettlementWindow(
            operations_pb2.CloseSettlementWindowRequest(window_id=window_id), timeout=600)
        return time.perf_counter() - t0, settlements_pb2.SettlementWindowState.Name(answer.window.state)

    async def close(self) -> None:
        await self.channel.close(None)
        await self.gateway_channel.close(None)


# A round's phases, in order, by their names in scale.json: the operators' scrape run beside the traffic (its
# options), or none.
PHASES: dict[str, dict[str, Any] | None] = {"quiet": None, "scraped": {}, "scraped_no_cli": {"cli": False},
                                            "scraped_cli_nice0": {"cli_niceness": "0"}}


async def measure(endpoints: Endpoints, gateway_pid: int, *, rate: float, seconds: float, rounds: int,
                  close_window: str, transfer_ids: list[str], last_event_id: Callable[[], int]) -> dict[str, Any]:
    """Quiet and scraped traffic side by side, `rounds` of each, alternating. Scraped three ways, to tell the
    gateway's share from the CLI process's on the same cores: as operators would (`gongji stats` at the
    priority it gives itself), without `gongji stats`, and with `gongji stats` at the caller's priority
    (GONGJI_CLI_NICE=0). Then the reads, then the close."""
    traffic, operators = Traffic(endpoints, rate), Operators(endpoints)
    found: dict[str, Any] = {"rss_mb_before_warm_up": rss_mb(gateway_pid)}
    phases: dict[str, list[dict[str, Any]]] = {phase: [] for phase in PHASES}
    scrapes: dict[str, list[float]] = {"metrics": [], "snapshot": [], "stats": [], "stats_cli": []}
    try:
        # Warm-up: traffic, and every kind of operators' call once (channels, caches, first-call allocations);
        # the memory at the start is read after it.
        await asyncio.gather(traffic.run(3.0), operators.http("/metrics"), operators.http("/api/snapshot"),
                             operators.stats())
        await operators.reads(transfer_ids[:1], last_event_id(), times=1)
        found["rss_mb_start"] = rss_mb(gateway_pid)
        for _ in range(rounds):
            for phase, scrape in PHASES.items():
                if scrape is None:
                    calls = await traffic.run(seconds)
                else:
                    calls, scraped_now = await asyncio.gather(traffic.run(seconds), operators.scrape(seconds, **scrape))
                    if phase == "scraped":  # the operators' own latencies: scraped as operators would
                        for key, values in scraped_now.items():
                            scrapes[key].extend(values)
                phases[phase].append(figures(phase, calls, *await traffic.lifecycles(calls)))
        for rows in phases.values():
            found |= {key: (round(statistics.median(row[key] for row in rows), 2) if "_ms_" in key
                            else sum(row[key] for row in rows)) for key in rows[0]}
        found["rounds"] = phases
        for key, values in scrapes.items():
            found[f"{key}_ms_median"], found[f"{key}_ms_max"] = ms(values), ms([max(values)] if values else [])
            found[f"{key}_samples"] = len(values)
        reads_task = asyncio.create_task(traffic.run(seconds))
        found |= await operators.reads(transfer_ids, last_event_id())
        await reads_task
        found |= await _close_under_traffic(traffic, operators, close_window, seconds)
        found["rss_mb_end"] = rss_mb(gateway_pid)
        found["probe_failures"] = {kind: failed for kind, failed in operators.failures.items() if failed}
    finally:
        await traffic.close()
        await operators.close()
    return found


async def _close_under_traffic(traffic: Traffic, operators: Operators, window_id: str,
                               seconds: float) -> dict[str, Any]:
    """CloseSettlementWindow of `window_id` while the provinces' traffic runs; their p99 over the calls started
    while it ran (and over the whole phase)."""
    run = asyncio.create_task(traffic.run(max(seconds, 5.0)))
    await asyncio.sleep(2.0)
    began = time.time()
    close_s: float | None
    try:
        close_s, state = await operators.close_window(window_id)
    except PROBE_ERRORS as error:
        close_s, state = None, _error(error)
    ended = time.time()
    calls = await run
    during = [call for call in calls if began - 0.5 <= call.started_at <= ended]
    lifecycles, incomplete = await traffic.lifecycles(calls)
    during_lifecycles, _ = await traffic.lifecycles(during)
    ok = [call.latency_s for call in during if call.code == "OK"]
    return {"close_s": None if close_s is None else round(close_s, 3), "close_window": window_id, "close_state": state,
            "close_calls_during": len(during), "submit_p99_ms_during_close": ms(ok, 99),
            "lifecycle_p99_ms_during_close": ms(during_lifecycles, 99),
            **figures("close_phase", calls, lifecycles, incomplete)}
