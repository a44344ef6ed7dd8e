"""The bench's phase table says what the run does: every figure in latest.json is named by the phase that
yields it, and a lifecycle counts only when both provinces were told COMMITTED within its window."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench.checks import Outcomes
from bench.load import Call, Phase
from bench.phases import PHASES, lifecycle
from bench.report import ratios
from bench.run import Options
from protos.gongji.stub.v1 import control_pb2
from protos.gongji.v1 import transfers_pb2

COMMITTED = transfers_pb2.TRANSFER_STATE_COMMITTED


def test_every_ratio_the_report_derives_is_named_by_a_phase() -> None:
    named = {key for step in PHASES for key in step.yields}
    found = ratios({"echo_rounds": [{"rps": 1000.0}], "submit_tps": 1.0, "lifecycle_tps": 1.0,
                    "submit_tps_after": 1.0, "stalled_watchers_submit_tps": 1.0, "pipeline_lifecycle_tps": 1.0,
                    "floor_submit_tps": 1.0, "floor_lifecycle_tps": 1.0, "consume_tps": 1.0})
    assert set(found) <= named
    assert {"floor_share_submit", "floor_share_lifecycle"} <= named


def test_the_phases_are_the_ones_that_anchor_the_goal_and_each_figure_has_one_source() -> None:
    assert [step.name for step in PHASES] == ["warm-up", "echo-1", "transfers", "transfers-stalled-watchers",
                                              "transfers-after", "pipeline", "floor-records", "echo-2", "accounting",
                                              "consumptions"]
    # The two echo rounds yield the same figures (echo_rps is their median); nothing else is shared.
    rows = [step.yields for step in PHASES if not step.name.startswith("echo-")]
    counts = Counter(key for row in rows for key in row)
    assert [key for key, count in counts.items() if count > 1] == []


def test_durations_read_as_the_run_spends_them() -> None:
    by_name = {step.name: step for step in PHASES}
    assert by_name["transfers"].duration == "BENCH_SECONDS + the drain"
    assert by_name["floor-records"].duration == "BENCH_SECONDS + 3 s"
    assert by_name["accounting"].duration == "at once"
    assert by_name["consumptions"].duration == "2 × BENCH_SECONDS + 10 s"
    options = Options(seconds=20, concurrency=32, drain_timeout_s=60, results_dir=Path("results"))
    # Nine windows (two of them the consumptions'), four drains (warm-up and the three transfer phases), 1 s of
    # warm-up echo, 2 × 3 s settling, 10 s to read the quota back: what the run may take beyond starting its
    # processes.
    assert sum(step.longest_s(options) for step in PHASES) == 9 * 20 + 4 * 60 + 1 + 2 * 3 + 10


def _told(province: str, at: dict[str, float]) -> Outcomes:
    notifications = {transfer_id: [control_pb2.Notification(transfer_id=transfer_id, state=COMMITTED, received_at=t)]
                     for transfer_id, t in at.items()}
    return Outcomes(province, notifications, Counter(), {}, 0)


def test_a_lifecycle_counts_in_its_window_only_once_both_provinces_were_told() -> None:
    phase = Phase("transfers", started_at=100.0, window_s=10.0, elapsed_s=10.0, calls=[
        Call("a", 101.0, 0.01, "OK"),  # both told within the window: 1 s after its start, at the latest
        Call("b", 102.0, 0.01, "OK"),  # the receiver told after the window: completed, not in the window
        Call("c", 103.0, 0.01, "OK"),  # the giver never told: not completed
        Call("d", 104.0, 0.01, "UNAVAILABLE"),  # refused: not a lifecycle
    ])
    outcomes = {"650000": _told("650000", {"a": 101.5, "b": 103.0, "d": 105.0}),
                "620000": _told("620000", {"a": 102.0, "b": 111.0, "c": 104.0, "d": 105.0})}
    assert lifecycle(phase, outcomes) == {
        "lifecycle_tps": 0.1, "lifecycle_p50_ms": 1000.0, "lifecycle_p99_ms": 9000.0,
        "lifecycle_tps_drained": 0.2,  # two completed over the 11 s until the last
        "lifecycle_completed_in_window": 1, "lifecycle_completed": 2,
    }
