"""One bench run: start the processes, run the phase table (bench.phases), write the report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from bench import report
from bench.phases import PHASES, measure
from bench.procs import (
    PROJECT_ROOT,
    BenchError,
    Children,
    cpu_seconds,
    free_ports,
    machine_busy_ticks,
    process_cpu_seconds,
    wait_for_health,
    wait_for_line,
)
from bench.transfers import GANSU, XINJIANG
from scripts import launcher
from scripts.launcher import Proc

STARTUP_TIMEOUT_S = 30.0
T = TypeVar("T")
ECHO_READY = re.compile(r"echo ready on (\S+)")
PIPELINE_READY = re.compile(r"pipeline \w+ ready on (\S+)")
FLOOR_READY = re.compile(r"floor \w+ ready on (\S+)")


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
    floor: Relays  # bench.floor with the gateway's records: the five RPCs doing the contract's least


@dataclass(frozen=True)
class Relays:
    """A relay gateway and its two relay provinces (bench.pipeline or bench.floor)."""

    gateway: str
    provinces: dict[str, str]


# A load test sends thousands of transfers from one giver at any hour: the giver's province lifts the
# daily limit and the blackout (D12 policy) for the run. Everything else is the national default.
BENCH_POLICY = ["daily_transfer_limit = 1000000", "blackout_start_minute = 0", "blackout_end_minute = 0"]


def gateway_env(sqlite_synchronous: str) -> dict[str, str]:
    """What the bench's gateway is told besides its ports, database, manifest and keys (scripts/launcher.py)."""
    return {
        "GONGJI_METRICS_LISTEN": "127.0.0.1:0",
        "GONGJI_LOG_LEVEL": "WARNING",
        # The bench measures the gateway's capacity: one giver's province sends everything, unthrottled.
        "GONGJI_RATE_LIMIT_PER_SECOND": "0",
        "GONGJI_SQLITE_SYNCHRONOUS": sqlite_synchronous,  # see Options.sqlite_synchronous
    }


async def start_stack(children: Children, workdir: Path, sqlite_synchronous: str) -> Stack:
    """The echo server and the relays, then the launcher's stack (stubs, the manifest naming them, the gateway),
    then the wait for the echo and relays to serve.

    The launcher's stack is plaintext on loopback: the bench measures the exchange's own work, as it did before
    mutual TLS (a TLS run would add the handshakes and record encryption of five processes).
    """
    gw_port, ops_port, xj_port, gs_port, xj_control, gs_control, echo_port, *relay_ports = free_ports(7 + 2 * 3)
    db_path = workdir / "bench.db"
    stack = children.stack = launcher.Stack(
        workdir, f"sqlite:///{db_path}", [f"127.0.0.1:{gw_port}"], [f"127.0.0.1:{ops_port}"],
        {XINJIANG: f"127.0.0.1:{xj_port}", GANSU: f"127.0.0.1:{gs_port}"},
        {XINJIANG: f"127.0.0.1:{xj_control}", GANSU: f"127.0.0.1:{gs_control}"})
    echo = f"127.0.0.1:{echo_port}"
    echo_child = children.start(
        "echo", ["-m", "bench.echo_server", "--listen", echo, "--max-seconds", "3600"]
    )
    # The flow's five RPCs between three relay processes that do no work (bench.pipeline), and the same
    # doing only what the contract requires, the gateway's records included (bench.floor), each on ports
    # of its own. The floor's provinces verify nothing: the least any implementation does.
    relay_sets: dict[str, tuple[str, list[str]]] = {
        "pipeline": ("bench.pipeline", []),
        "floor-records": ("bench.floor", [f"--db={workdir / 'floor-records.db'}"]),
    }
    addresses: dict[str, Relays] = {}
    relays: list[tuple[Proc, str, re.Pattern[str]]] = []
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
    # Each awaited until it serves; the launcher's blocking channels closed before the bench's asyncio ones open.
    stack.start(gateway_env=gateway_env(sqlite_synchronous), policies={XINJIANG: BENCH_POLICY})
    stack.close_channels()
    await wait_for_health(stack.gateway, stack.ops_addresses[0], STARTUP_TIMEOUT_S)
    await wait_for_line(echo_child, ECHO_READY, STARTUP_TIMEOUT_S)
    for child, address, ready in relays:
        await wait_for_line(child, ready, STARTUP_TIMEOUT_S)
        await wait_for_health(child, address, STARTUP_TIMEOUT_S)
    await wait_for_health(echo_child, echo, STARTUP_TIMEOUT_S)
    return Stack(children, stack.keys_dir, db_path, stack.gateway_addresses[0], stack.stub_addresses,
                 stack.stub_controls, echo, stack.ops_addresses[0], addresses["pipeline"], addresses["floor-records"])


class CpuMeter:
    """CPU seconds of every process (the bench itself included) and the machine, per phase."""

    def __init__(self, children: Children) -> None:
        self._children = children
        self.phases: dict[str, dict[str, Any]] = {}
        self._mark: tuple[float, dict[str, float], tuple[int, int]] | None = None

    def _sample(self) -> dict[str, float]:
        sample = {child.name: cpu_seconds(child) for child in self._children.started}
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
        cpu = CpuMeter(children)
        found = await measure(stack, options, cpu)
    finally:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(15)
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    figures = {**report.ratios(found), **found}
    if unyielded := [key for step in PHASES for key in step.yields if key not in figures]:
        raise BenchError(f"the phase table names figures no phase yielded: {unyielded}")
    return {
        **figures,
        "cpu": cpu.phases,
        "machine": machine,
        "bench_seconds": options.seconds,
        "concurrency": options.concurrency,
        "sqlite_synchronous": options.sqlite_synchronous,
        "started_at": started_at,
        "phases": [{"name": step.name, "runs": step.runs, "duration": step.duration, "yields": list(step.yields)}
                   for step in PHASES],
    }


def main() -> int:
    try:
        options = Options.from_env()
    except ValueError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    overall_s = sum(step.longest_s(options) for step in PHASES) + 4 * STARTUP_TIMEOUT_S
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
    path = report.write(figures, options.results_dir)
    print(report.summary(figures))
    for line in report.missed(figures):
        print(f"MISSED: {line}")
    for line in figures["noisy_phases"]:
        print(f"NOISY: {line}")
    print(f"written {path.relative_to(PROJECT_ROOT)}")
    return 0
