"""The bench's report says when its figures are not to be trusted: other processes busy, or the
machine's own speed moving between the echo rounds that bracket the transfer phases."""

from __future__ import annotations

from typing import Any

from bench.report import noise


def run(echo_rounds: list[float], others: float = 2.0) -> dict[str, Any]:
    return {"cpu": {"transfers": {"others_percent_of_one_core": others}},
            "echo_rounds": [{"rps": rate} for rate in echo_rounds]}


def test_a_quiet_steady_run_is_not_flagged() -> None:
    assert noise(run([3163.3, 3210.6])) == []


def test_echo_rounds_far_apart_are_flagged() -> None:
    [line] = noise(run([4456.0, 3302.0]))
    assert "4456 / 3302" in line and "35%" in line


def test_rounds_within_the_limit_are_not() -> None:
    assert noise(run([3300.0, 3790.0])) == []  # 14.8 %


def test_busy_other_processes_are_flagged() -> None:
    [line] = noise(run([3200.0, 3210.0], others=35.0))
    assert line.startswith("transfers: other processes used 35%")
