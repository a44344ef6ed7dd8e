"""Child processes of a bench run: free ports, launching with logs to files, readiness, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The run itself failed (a process did not start, died, or a check could not be made)."""


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (all held open together, so none is picked twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    # If the bench is killed outright (no finally runs), the kernel still ends its children.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


@dataclass
class Child:
    """One started process; its stdout and stderr go to files so a chatty child never blocks."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        try:
            return self.stdout_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        """The end of its stderr then stdout, to explain a failure."""
        text = []
        for path in (self.stderr_path, self.stdout_path):
            with contextlib.suppress(OSError):
                text.extend(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        return "\n".join(f"    {self.name}| {line}" for line in text)

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with code {code}:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """This process and the processes it started (the gateway's outbox dispatchers)."""
        return process_cpu_seconds(self.pid) + sum(process_cpu_seconds(pid) for pid in child_pids(self.pid))


@dataclass
class Children:
    """Every process the bench started, stopped together at the end whatever happened."""

    log_dir: Path
    started: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stdout_path = self.log_dir / f"{name}.out"
        stderr_path = self.log_dir / f"{name}.err"
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")}
        child_env.update(env or {})
        child_env["PYTHONUNBUFFERED"] = "1"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            popen = subprocess.Popen(
                [sys.executable, *argv],
                cwd=PROJECT_ROOT,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                # Only a prctl call, and every child starts before the bench opens a channel (threads).
                preexec_fn=_die_with_parent,
            )
        child = Child(name, popen, stdout_path, stderr_path)
        self.started.append(child)
        return child

    def stop_all(self, grace_s: float = 8.0) -> None:
        """SIGTERM (graceful stop) to all, then SIGKILL to whatever is still running after `grace_s`."""
        for child in self.started:
            if child.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.popen.terminate()
        deadline = time.monotonic() + grace_s
        for child in self.started:
            try:
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    child.popen.kill()
                child.popen.wait(5)


async def wait_for_line(child: Child, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
    """Wait until the child prints a line matching `pattern`; fail early if it exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        match = pattern.search(child.stdout())
        if match:
            return match
        child.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not get ready within {timeout_s:.0f}s:\n{child.tail()}")
        await asyncio.sleep(0.05)


async def wait_for_file(child: Child, path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        child.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not write {path.name} within {timeout_s:.0f}s:\n{child.tail()}")
        await asyncio.sleep(0.05)


async def wait_for_health(child: Child, address: str, timeout_s: float) -> None:
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
