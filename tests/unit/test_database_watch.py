"""Waiting out a locked database without holding up the event loop, the watch that tells health and the log, and
their settings."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from gateway.config import ConfigError, Settings
from gateway.database_watch import DatabaseWatch
from gateway.domain.errors import DatabaseBusy
from gateway.usecases.runner import waiting_out_locks


async def inline(use_case: Any, *args: Any) -> Any:
    return use_case(*args)


def test_a_locked_database_is_retried_with_the_loop_free_then_refused_at_the_bound() -> None:
    attempts: list[float] = []
    refused: list[int] = []

    def locked_until(free_after: int) -> str:
        attempts.append(time.monotonic())
        if len(attempts) <= free_after:
            raise DatabaseBusy("locked")
        return "done"

    ticks: list[float] = []

    async def run(free_after: int, bound: float) -> Any:
        done = asyncio.Event()

        async def ticker() -> None:  # whatever else the loop has to do meanwhile
            while not done.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        try:
            return await waiting_out_locks(inline, bound, lambda: refused.append(1))(locked_until, free_after)
        finally:
            done.set()
            await task

    assert asyncio.run(run(free_after=5, bound=5.0)) == "done"
    assert len(attempts) == 6 and refused == []

    attempts.clear()
    ticks.clear()
    started = time.monotonic()
    with pytest.raises(DatabaseBusy) as error:
        asyncio.run(run(free_after=10**6, bound=0.3))
    assert error.value.reason == "DATABASE_BUSY" and "0.3 s" in error.value.message
    assert attempts[-1] - started >= 0.3 and refused == [1]
    assert len(attempts) > 3, "attempts were made again while the bound lasted"
    assert len(ticks) > 10, "the loop ran other work between the attempts"


def test_the_watch_tells_health_and_logs_an_episode_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.database_watch")
    answers = [True, False, False, False, True, True, False, True, True]  # two episodes, then writable

    def probe() -> bool:
        return answers.pop(0) if answers else True

    told: list[bool] = []

    async def on_change(writable: bool) -> None:
        told.append(writable)

    async def run() -> DatabaseWatch:
        watch = DatabaseWatch(probe, 5.0, interval_seconds=0.01, warn_every_seconds=3600)
        watch.start(on_change)
        watch.count_refusal()
        while answers:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await watch.stop()
        return watch

    watch = asyncio.run(run())
    assert told == [False, True, False, True] and watch.writable
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    # The second episode began within the hour of the first warning: counted, not warned of again.
    assert [level for level, _ in messages] == ["WARNING", "INFO"], messages
    assert "database busy: locked by another connection" in messages[0][1]
    assert "writable again after" in messages[1][1]


def test_a_failing_probe_counts_as_busy_and_names_the_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.database_watch")
    calls = {"n": 0}

    def probe() -> bool:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("refused")
        return True

    told: list[bool] = []

    async def on_change(writable: bool) -> None:
        told.append(writable)

    async def run() -> None:
        watch = DatabaseWatch(probe, 5.0, interval_seconds=0.01)
        watch.start(on_change)
        while calls["n"] < 4:
            await asyncio.sleep(0.01)
        await watch.stop()

    asyncio.run(run())
    assert told == [False, True]
    assert "failing (ConnectionError)" in caplog.records[0].getMessage()


def test_the_bound_and_the_stop_grace_come_from_the_environment() -> None:
    env = {"GONGJI_INSECURE_DEV_PLAINTEXT": "true"}
    defaults = Settings.from_env(env)
    assert (defaults.database_busy_seconds, defaults.stop_grace_seconds) == (5.0, 20.0)
    given = Settings.from_env({**env, "GONGJI_DATABASE_BUSY_SECONDS": "2.5", "GONGJI_STOP_GRACE_SECONDS": "40"})
    assert (given.database_busy_seconds, given.stop_grace_seconds) == (2.5, 40.0)
    for bad in ({"GONGJI_DATABASE_BUSY_SECONDS": "0"}, {"GONGJI_DATABASE_BUSY_SECONDS": "500"},
                {"GONGJI_STOP_GRACE_SECONDS": "0.5"}):
        with pytest.raises(ConfigError, match="database_busy_seconds"):
            Settings.from_env({**env, **bad})
