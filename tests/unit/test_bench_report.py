"""The bench's report: its budget arithmetic, and when its figures are not to be trusted (other
processes busy, or the machine's own speed moving between the echo rounds around the transfers)."""

from __future__ import annotations

from typing import Any

from bench.report import budget, budget_verdict, noise


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


def test_the_budget_splits_the_machine_as_documented() -> None:
    """At 0.10 × 1000 rps = 100 lifecycles/s, 2 cores give 20 ms a lifecycle; the pipeline's 500
    lifecycles/s at 100 % of a core cost 2 ms bare; Ed25519 7 × 50 µs + 7 × 100 µs = 1.05 ms."""
    report = {
        "echo_rps": 1000.0, "lifecycle_tps": 50.0, "machine": {"nproc": 2},
        "ed25519": {"sign_us": 50.0, "verify_us": 100.0, "signatures_per_lifecycle": 7,
                    "verifications_per_lifecycle": 7},
        "pipeline": {"calls_per_second": 2500.0},
        "cpu": {
            "pipeline": {"process_percent_of_one_core": {"pipeline-gateway": 50.0, "pipeline-650000": 20.0,
                                                         "pipeline-620000": 20.0, "driver": 10.0}},
            "transfers": {"process_percent_of_one_core": {"gateway": 100.0, "stub-650000": 20.0,
                                                          "stub-620000": 30.0, "driver": 10.0}},
        },
    }
    assert budget(report) == {
        "target_lifecycle_tps": 100.0,
        "machine_cpu_ms_per_lifecycle_at_target": 20.0,
        "bare_rpcs_ms": 2.0,
        "ed25519_ms": 1.05,
        "other_work_budget_ms": 16.95,
        "other_work_now_ms": 28.95,  # 160 % of a core at 50/s = 32 ms, less the two above
        "gateway_cpu_ms_per_lifecycle_at_target": 10.0,
        "gateway_bare_rpcs_ms": 1.0,
        "gateway_ed25519_ms": 0.45,  # its 5 signatures and 2 verifications
        "gateway_other_work_budget_ms": 8.55,
        "gateway_other_work_now_ms": 18.55,
        "harness_other_work_now_ms": 10.4,  # (32 − 20) − (2 − 1) − (1.05 − 0.45)
        "gateway_other_work_left_by_harness_ms": 6.55,  # 20 − 2 − 1.05 − 10.4
    }


def test_the_verdict_says_when_no_work_could_reach_the_target() -> None:
    allowed = {"machine_cpu_ms_per_lifecycle_at_target": 1.29, "bare_rpcs_ms": 0.94, "ed25519_ms": 0.53,
               "other_work_budget_ms": -0.18, "other_work_now_ms": 0.37, "harness_other_work_now_ms": 0.51,
               "gateway_other_work_left_by_harness_ms": -0.69}
    assert budget_verdict(allowed).startswith("out of reach on this machine-day")
    assert "1.47 ms a lifecycle, more than the 1.29 ms" in budget_verdict(allowed)
    harness_takes_it = allowed | {"other_work_budget_ms": 0.5, "gateway_other_work_left_by_harness_ms": -0.01}
    assert budget_verdict(harness_takes_it).startswith("out of reach with this harness")
    reachable = allowed | {"other_work_budget_ms": 1.19, "other_work_now_ms": 4.76,
                           "gateway_other_work_left_by_harness_ms": 0.13}
    assert budget_verdict(reachable) == "storage and logic must fall from 4.76 to 1.19 ms a lifecycle (× 0.25)"
    assert budget_verdict(reachable | {"other_work_now_ms": 1.0}) == "within the budget"
