"""The bench's consumption phase (bench.consumptions) run for half a second a half against the launcher's stack (the
gateway and both stub provinces, as `make bench` starts them): every consumption answered with a verified receipt
(the warm-up's too), the quota read back through GetQuota and the database, nothing over-drawn or lost. A smoke
test: no speed is asserted (the bench measures that)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from bench import consumptions
from bench.phases import bind_giver_and_receiver
from bench.run import BENCH_POLICY, gateway_env
from bench.transfers import XINJIANG
from scripts.launcher import Stack

T = TypeVar("T")
SECONDS = 0.5


@dataclass
class Options:
    seconds: float = SECONDS


@dataclass
class Source:
    binding_id: str


@dataclass
class BenchStack:
    """What the phase reads of bench.run's Stack."""

    gateway: str
    keys_dir: Path
    db_path: Path
    stub_controls: dict[str, str]


class Cpu:
    """Phases awaited as they come, their CPU not counted: not what this test is about."""

    def __init__(self) -> None:
        self.phases: list[str] = []

    async def phase(self, name: str, work: Awaitable[T]) -> T:
        self.phases.append(name)
        return await work


@dataclass
class Session:
    stack: BenchStack
    options: Options
    source: Source
    cpu: Cpu


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[BenchStack]:
    db_path = tmp_path / "bench.db"
    stack = Stack.allocate(tmp_path, f"sqlite:///{db_path}")
    with contextlib.ExitStack() as closing:
        closing.callback(stack.close)
        stack.start(gateway_env=gateway_env("NORMAL"), policies={XINJIANG: BENCH_POLICY})
        stack.close_channels()
        yield BenchStack(stack.gateway_addresses[0], stack.keys_dir, db_path, stack.stub_controls)


def test_the_consumption_phase_draws_every_bill_once_with_nothing_over_drawn_or_lost(launched: BenchStack) -> None:
    async def phase() -> dict[str, Any]:
        binding_id = await bind_giver_and_receiver(launched.stub_controls)
        session = Session(launched, Options(), Source(binding_id), Cpu())
        found = await consumptions.consumptions(session, "consumptions")  # type: ignore[arg-type]  # likewise
        assert session.cpu.phases == ["consumptions-steady", "consumptions-max"]
        return found

    found = uvloop.run(asyncio.wait_for(phase(), 90))
    assert set(found) == set(consumptions.YIELDS) - {"consume_ratio"}  # the ratio is the report's, from the echo
    assert (found["consume_errors"], found["consume_overdrawn"], found["consume_lost"]) == (0, 0, 0), found
    steady, flat_out, quota = found["consume_steady"], found["consume_max"], found["consume_quota"]
    # The open loop sent every call of its schedule, each answered; the closed loop drew at least once.
    assert steady["calls"] == steady["ok"] == consumptions.STEADY_RATE * SECONDS
    assert flat_out["ok"] == flat_out["calls"] >= 1
    drawn = quota["warmup_calls"] + steady["ok"] + flat_out["ok"]
    assert quota["consumptions_listed"] == quota["consumptions_stored"] == drawn
    assert quota["consumed_fen"] == drawn * consumptions.AMOUNT_FEN
    assert quota["granted_fen"] == consumptions.grant_size(SECONDS)
    assert quota["available_fen"] == quota["granted_fen"] - quota["consumed_fen"]
    assert found["consume_stored_but_refused"] == 0
    assert 0 < found["consume_p50_ms"] <= found["consume_p99_ms"]
