"""How often a submission waits for PostgreSQL: each wait is a round trip, and under load each is a wait to be
scheduled again, so the provinces' hot path keeps their number down (docs/benchmark.md)."""

from __future__ import annotations

import threading
import traceback
from collections import Counter
from collections.abc import Generator
from typing import Any

import psycopg.waiting
import pytest

from protos.gongji.stub.v1 import control_pb2
from tests.support import GANSU, Stack

POSTGRES_ONLY = pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
# psycopg prepares a statement on its fifth run on a connection (one round trip more, once): the warm-up runs each
# on every connection of the pool the stack's database threads use.
WARM_UP, COUNTED = 25, 10
# A submission waits about 7 times (docs/benchmark.md); two more would be a step back worth a look. Before its
# statements were batched it waited 14 to 15 times, before PostgreSQL chained the audit entries itself about 8.
MOST_WAITS = 9.0


def _submission_waits(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The waits for an answer from PostgreSQL made inside submit_transfer, by the statement's repository method,
    over COUNTED submissions; the outbox loop's and the sweeps' own transactions are left out."""
    waits: Counter[str] = Counter()
    counting = threading.Event()
    wait = psycopg.waiting.wait

    def counted(generator: Generator[Any, Any, Any], *args: Any, **kwargs: Any) -> Any:
        frames = [f.name for f in traceback.extract_stack(limit=40) if "/gateway/" in f.filename]
        if not counting.is_set() or "submit_transfer" not in frames:
            return wait(generator, *args, **kwargs)

        def tally() -> Generator[Any, Any, Any]:
            sent = None
            try:
                while True:
                    ready_for = generator.send(sent)
                    if ready_for == psycopg.waiting.Wait.R:  # waiting to read: an answer not yet come
                        waits[frames[-1]] += 1
                    sent = yield ready_for
            except StopIteration as end:
                return end.value

        return wait(tally(), *args, **kwargs)

    monkeypatch.setattr(psycopg.waiting, "wait", counted)
    stack.configure(GANSU, confirm_mode=control_pb2.CONFIRM_MODE_NEVER)  # the outcome's transactions stay out
    for _ in range(WARM_UP):
        stack.submit(stack.instruction(amount_fen=100))
    counting.set()
    for _ in range(COUNTED):
        stack.submit(stack.instruction(amount_fen=100))
    counting.clear()
    return waits


@POSTGRES_ONLY
def test_a_submission_waits_for_postgresql_at_most_nine_times(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    waits = _submission_waits(stack, monkeypatch)
    per_submission = sum(waits.values()) / COUNTED
    assert 5 <= per_submission <= MOST_WAITS, dict(waits)
