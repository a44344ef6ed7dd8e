"""The processes of a bench run: free ports, launching with logs to files, readiness, CPU time, stopping."""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.launcher import LaunchError, Proc, Stack, stop_all
from scripts.launcher import free_ports as free_ports  # bench.run picks its ports with it

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The run itself failed: a process did not start or died (the launcher raises it), or a check could not be made.
BenchError = LaunchError


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc; 0.0 if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name may contain spaces and parentheses: fields are counted after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def child_pids(parent: int) -> list[int]:
    """Direct children of `parent`, from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


CPU_KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_ticks() -> list[int]:
    """Jiffies of all CPUs since boot by kind (CPU_KINDS, then guest time), from the first line of /proc/stat;
    empty if unreadable."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return []


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = machine_ticks()
    if not values:
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def cpu_percent(before: list[int], after: list[int]) -> dict[str, float]:
    """How the machine's CPU time between two machine_ticks() went, in % by kind (CPU_KINDS): a measurement's
    share of iowait or steal (another guest's), or of nice (a `gongji` command at its lowered priority), tells
    a noisy host."""
    spent = [later - earlier for earlier, later in zip(before[:len(CPU_KINDS)], after[:len(CPU_KINDS)], strict=True)]
    total = sum(spent) or 1
    return {kind: round(100 * value / total, 1) for kind, value in zip(CPU_KINDS, spent, strict=True)}


def cpu_seconds(proc: Proc) -> float:
    """A started process and the processes it started (the gateway's outbox dispatchers)."""
    return process_cpu_seconds(proc.pid) + sum(process_cpu_seconds(pid) for pid in child_pids(proc.pid))


@dataclass
class Children:
    """Every process of a bench run, stopped together at the end whatever happened: the launcher's stack (the
    stubs and the gateway, scripts/launcher.py) and the bench's own (echo, relays), each logging to a file."""

    log_dir: Path
    own: list[Proc] = field(default_factory=list)
    stack: Stack | None = None

    @property
    def started(self) -> list[Proc]:
        stack = [*self.stack.stubs.values(), *self.stack.gateways] if self.stack is not None else []
        return [*stack, *self.own]

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        child = Proc(name, argv, env or {}, self.log_dir)
        child.start()
        self.own.append(child)
        return child

    def stop_all(self, grace_s: float = 8.0) -> None:
        """SIGTERM (graceful stop) to all, then SIGKILL to whatever is still running after `grace_s`."""
        if self.stack is not None:
            self.stack.close_channels()
        stop_all(self.started, grace_s)


async def wait_for_line(child: Proc, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
    """Wait until the child prints a line matching `pattern`; fail early if it exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        match = pattern.search(child.output())
        if match:
            return match
        child.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not get ready within {timeout_s:.0f}s:\n{child.tail()}")
        await asyncio.sleep(0.05)


async def wait_for_health(child: Proc, address: str, timeout_s: float) -> None:
    """Wait until grpc.health.v1 on `address` answers SERVING for the whole server ("")."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            child.check_alive()
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise BenchError(f"{child.name} on {address} not SERVING within {timeout_s:.0f}s:\n{child.tail()}")
            await asyncio.sleep(0.1)
