"""The bench's report: the goal's arithmetic (the real flow as a share of the floor, every rate against the
echo), and when its figures are not to be trusted (other processes busy, failed relay calls, or the
machine's own speed moving between the echo rounds around the transfers)."""

from __future__ import annotations

from typing import Any

from bench.report import missed, noise, ratios


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


def test_relay_phases_with_failed_calls_are_flagged() -> None:
    report = run([3200.0, 3210.0]) | {"pipeline": {"errors": 0}, "floor": {"errors": 3}}
    assert noise(report) == ["floor-records: 3 calls failed"]


def figures(**changes: float) -> dict[str, Any]:
    """What the phases of a run found, before the ratios: echo rounds of 1000 and 1200 rps."""
    return {"echo_rounds": [{"rps": 1000.0}, {"rps": 1200.0}], "submit_tps": 55.0, "lifecycle_tps": 44.0,
            "submit_tps_after": 45.0, "stalled_watchers_submit_tps": 49.0, "pipeline_lifecycle_tps": 154.0,
            "floor_submit_tps": 100.0, "floor_lifecycle_tps": 88.0, "consume_tps": 330.0} | changes


def test_the_goal_is_the_real_flow_as_a_share_of_the_floor_in_the_same_run() -> None:
    assert ratios(figures()) == {
        "floor_share_submit": 0.55,  # 55 of the floor's 100 submissions a second
        "floor_share_lifecycle": 0.5,  # 44 of its 88 lifecycles
        "echo_rps": 1100.0,  # the median of the two rounds: their mean
        "submit_ratio": 0.05,
        "lifecycle_ratio": 0.04,
        "floor_submit_ratio": 0.0909,
        "floor_lifecycle_ratio": 0.08,
        "pipeline_lifecycle_ratio": 0.14,
        "lifecycle_share_of_pipeline": 0.286,
        "stalled_watchers_submit_ratio": 0.98,  # 49 against the mean of 55 and 45
        "consume_ratio": 0.3,  # 330 consumptions a second against the echo's 1100
    }


def test_a_floor_that_carried_nothing_gives_no_share_rather_than_failing_the_run() -> None:
    found = ratios(figures(floor_submit_tps=0.0, floor_lifecycle_tps=0.0))
    assert (found["floor_share_submit"], found["floor_share_lifecycle"]) == (0.0, 0.0)


CLEAN = {"errors": 0, "lost": 0, "duplicated": 0, "consume_errors": 0, "consume_overdrawn": 0, "consume_lost": 0,
         "consume_p99_ms": 50.0}


def test_only_the_counts_that_must_be_zero_and_the_checkout_p99_are_missed() -> None:
    assert missed(CLEAN | {"submit_ratio": 0.05}) == []  # a p99 of 50 ms meets its target
    assert missed(CLEAN | {"errors": 2, "duplicated": 1}) == ["errors = 2 (must be 0)", "duplicated = 1 (must be 0)"]
    assert missed(CLEAN | {"consume_overdrawn": 1, "consume_lost": 3, "consume_p99_ms": 50.5}) == [
        "consume_overdrawn = 1 (must be 0)", "consume_lost = 3 (must be 0)",
        "consume_p99_ms = 50.5 at 100/s (target <= 50)"]
