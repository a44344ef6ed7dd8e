"""Where calls run: the operators' reads on threads of their own, never on the provinces' event loop or threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from gateway.usecases import monitoring as monitoring_cases
from gateway.usecases import transfers as transfer_cases
from protos.gongji.v1 import operations_pb2
from tests.support import Stack


def recording_thread(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[str]:
    """Replace use case `name` of `module` with one that notes the thread it runs on, then does the same."""
    threads: list[str] = []
    real: Callable[..., Any] = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return threads


def test_operators_reads_run_on_their_own_threads(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = recording_thread(monkeypatch, monitoring_cases, "list_transfers")
    counted = recording_thread(monkeypatch, monitoring_cases, "get_stats")
    submitted = recording_thread(monkeypatch, transfer_cases, "submit_transfer")

    stack.submit(stack.instruction())
    stack.operations.ListTransfers(operations_pb2.ListTransfersRequest(page_size=10), timeout=10)
    stack.operations.GetStats(operations_pb2.GetStatsRequest(), timeout=10)

    assert submitted and listed and counted
    provinces_thread = submitted[0]
    # SQLite runs the provinces' use cases on the event loop itself; PostgreSQL on the "db" threads.
    assert provinces_thread == "test-loop" or provinces_thread.startswith("db")
    for operators_thread in listed + counted:
        assert operators_thread.startswith("ops"), operators_thread
