"""A database another connection holds locked: health keeps answering and says NOT_SERVING, a call is refused
UNAVAILABLE / DATABASE_BUSY within the bound, the operators' stats still answer (reads take no lock), the log names
the cause once; released, the same call executes once."""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import Settings
from protos.gongji.v1 import operations_pb2, operations_pb2_grpc, transfers_pb2
from tests.support import LoopThread, error_seen, start_stack, wait_until

BOUND_S = 5.0  # the documented default (GONGJI_DATABASE_BUSY_SECONDS), checked below
HELD_S = BOUND_S + 3  # the lock outlasts the bound
PROBE_EVERY_S = 0.1
PROBE_DEADLINE_S = 1.0


@dataclass
class HealthProbes:
    """Health Check on both ports every PROBE_EVERY_S from a thread of its own: what each said, or its error."""

    targets: dict[str, tuple[grpc.Channel, str]]  # port -> (channel, service asked about)
    seen: list[tuple[float, str, str]] = field(default_factory=list)  # (when, port, status or error code)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(PROBE_EVERY_S):
            for port, (channel, service) in self.targets.items():
                try:
                    answer = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=PROBE_DEADLINE_S)
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                except grpc.RpcError as error:
                    status = error.code().name
                self.seen.append((time.monotonic(), port, status))

    def said(self, status: str, since: float = 0.0) -> set[str]:
        """The ports that answered `status` since `since`."""
        return {port for at, port, seen in self.seen if seen == status and at >= since}

    def stop(self) -> None:
        self._stop.set()


@contextlib.contextmanager
def probing(targets: dict[str, tuple[grpc.Channel, str]]) -> Iterator[HealthProbes]:
    probes = HealthProbes(targets)
    thread = threading.Thread(target=probes.run, name="health-probes", daemon=True)
    thread.start()
    try:
        yield probes
    finally:
        probes.stop()
        thread.join(5)


@contextlib.contextmanager
def locked(db_url: str) -> Iterator[Callable[[], None]]:
    """Another connection takes what every write needs (SQLite's write lock; on PostgreSQL an ACCESS EXCLUSIVE
    lock on the transfers table) and holds it until the release it yields is called (or the block ends)."""
    if db_url.startswith("sqlite"):
        connection = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None, timeout=10,
                                     check_same_thread=False)
        connection.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        connection = psycopg.connect(db_url)  # type: ignore[assignment]
        connection.execute("SET lock_timeout = '10s'")
        connection.execute("LOCK TABLE transfers IN ACCESS EXCLUSIVE MODE")
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            connection.rollback()
            connection.close()

    try:
        yield release
    finally:
        release()


def test_a_locked_database_refuses_calls_within_the_bound_and_health_says_so(
        loop_thread: LoopThread, tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    assert Settings().database_busy_seconds == BOUND_S
    stack = start_stack(loop_thread, tmp_path, db_url)
    try:
        stack.submit(stack.instruction())  # the gateway has written before
        request = transfers_pb2.SubmitTransferRequest(instruction=stack.sign(stack.instruction()))
        targets = {"provinces": (stack.channel, "gongji.v1.Transfers"),
                   "operators": (stack.ops_channel, "gongji.v1.Operations")}
        with probing(targets) as probes, locked(db_url) as release:
            locked_at = time.monotonic()
            submitted = stack.transfers.SubmitTransfer.future(request, timeout=3 * HELD_S)
            with pytest.raises(grpc.RpcError) as refused:
                submitted.result(timeout=3 * HELD_S)
            refused_after = time.monotonic() - locked_at
            # Reads wait for no lock: an operator still sees the exchange while nothing can be written.
            stats = operations_pb2_grpc.OperationsStub(stack.ops_channel).GetStats(
                operations_pb2.GetStatsRequest(), timeout=1.0)
            wait_until(lambda: probes.said("NOT_SERVING") == set(targets), timeout=HELD_S,
                       what="health to say NOT_SERVING on both ports")
            still_locked = time.monotonic() - locked_at < HELD_S
            wait_until(lambda: time.monotonic() - locked_at >= HELD_S, timeout=HELD_S,
                       what="the lock to have been held past the bound")
            release()
            released_at = time.monotonic()
            wait_until(lambda: probes.said("SERVING", since=released_at) == set(targets), timeout=10,
                       what="health to say SERVING on both ports again")
        assert sum(pair.count for pair in stats.transfers) >= 1, stats
        seen = error_seen(refused.value)
        assert (seen.code, seen.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_BUSY"), seen
        assert still_locked and refused_after < BOUND_S + 2, (
            f"refused {refused_after:.1f} s into a lock held {HELD_S} s: within the {BOUND_S} s bound, not at its end")
        answers = {status for _, _, status in probes.seen}
        assert answers <= {"SERVING", "NOT_SERVING"}, f"health probes that got no answer in time: {answers}"

        # Nothing was done: the same bytes executed now, and once.
        first = stack.transfers.SubmitTransfer(request, timeout=10)
        again = stack.transfers.SubmitTransfer(request, timeout=10)
        assert not first.replay and again.replay and again.receipt == first.receipt

        records = [r for r in caplog.records if r.name == "gateway.database_watch"]
        warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        over = [r.getMessage() for r in records if r.levelno == logging.INFO]
        assert len(warnings) == 1 and "database busy" in warnings[0] and "locked" in warnings[0], warnings
        over_line = r"writable again after [\d.]+ s busy; [1-9]\d* call\(s\) refused DATABASE_BUSY"
        assert len(over) == 1 and re.search(over_line, over[0]), over
    finally:
        stack.close()
