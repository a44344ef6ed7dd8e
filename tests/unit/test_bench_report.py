"""The bench's report: its budget arithmetic, and when its figures are not to be trusted (other
processes busy, or the machine's own speed moving between the echo rounds around the transfers)."""

from __future__ import annotations

from typing import Any

from bench.report import budget, budget_verdict, floor_bound, floor_verdict, noise


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
    report = run([3200.0, 3210.0]) | {"pipeline": {"errors": 0},
                                      "floor": {"signatures": {"errors": 3}, "records": {"errors": 0}}}
    assert noise(report) == ["floor-signatures: 3 calls failed"]


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


def floors(no_work: tuple[float, float], signatures: tuple[float, float], records: tuple[float, float],
           cores_needed: float, with_checks: float) -> dict[str, Any]:
    """A run's relay figures at an echo of 1000 rps: (submit, lifecycle) ratios of each relay phase, and
    the cores the floor's work would take at both targets, alone and with the provinces' checks."""
    return {
        "echo_rps": 1000.0,
        "pipeline_submit_tps": 1000.0 * no_work[0], "pipeline_lifecycle_ratio": no_work[1],
        "floor_signatures_submit_ratio": signatures[0], "floor_signatures_lifecycle_ratio": signatures[1],
        "floor_records_submit_ratio": records[0], "floor_records_lifecycle_ratio": records[1],
        "floor_bound": {"cores_needed_at_both_targets": cores_needed, "cores_needed_with_province_checks": with_checks,
                        "cores": 2.0, "left_for_the_rest_ms": 10 * (2.0 - with_checks), "real_beyond_floor_ms": 4.0},
    }


def test_the_floor_bound_takes_a_submission_and_the_rest_of_a_lifecycle_at_their_own_targets() -> None:
    """Submissions alone: 500/s at 50 % + 25 % of a core = 1.5 ms each; the records floor: 100/s with
    four processes at 100 % in all = 10 ms a lifecycle. At an echo of 1000 rps: 150 submissions/s ×
    1.5 ms + 100 lifecycles/s × 8.5 ms = 1075 ms of CPU a second; the provinces' 5 checks at 100 µs add
    0.5 ms a lifecycle, 50 ms a second. The real flow: 50 lifecycles/s at 80 % = 16 ms each."""
    report = {
        "echo_rps": 1000.0, "machine": {"nproc": 2}, "lifecycle_tps": 50.0,
        "ed25519": {"verify_us": 100.0, "verifications_per_lifecycle": 7},  # the gateway's 2, the provinces' 5
        "floor": {"submissions": {"submit_tps": 500.0}, "records": {"submit_tps": 100.0}},
        "cpu": {
            "floor-submit": {"process_percent_of_one_core": {"floor-submit-gateway": 50.0, "driver": 25.0,
                                                             "floor-records-gateway": 0.4}},
            "floor-records": {"process_percent_of_one_core": {"floor-records-gateway": 50.0, "driver": 10.0,
                                                              "floor-records-650000": 15.0,
                                                              "floor-records-620000": 25.0, "echo": 0.5}},
            "transfers": {"process_percent_of_one_core": {"gateway": 50.0, "stub-650000": 5.0,
                                                          "stub-620000": 15.0, "driver": 10.0}},
        },
    }
    assert floor_bound(report) == {
        "submission_cpu_ms": 1.5, "lifecycle_cpu_ms": 10.0, "cores_needed_at_both_targets": 1.075,
        "province_checks_cpu_ms": 0.5, "cores_needed_with_province_checks": 1.125, "cores": 2.0,
        "left_for_the_rest_ms": 8.75,  # (2 − 1.125) cores over 100 lifecycles/s
        "real_beyond_floor_ms": 5.5,  # 16 − 10 − 0.5
    }


def test_a_floor_that_cannot_be_rescheduled_into_the_targets_puts_them_out_of_reach() -> None:
    verdict = floor_verdict(floors(no_work=(0.14, 0.13), signatures=(0.10, 0.10), records=(0.09, 0.09),
                                   cores_needed=2.31, with_checks=2.5))
    assert verdict == ("out of reach for any implementation of the contract on this machine: as they schedule "
                       "themselves, relays doing no work at all (bench.pipeline) reach only submit_ratio 0.1400 < "
                       "0.15; scheduled perfectly (submissions first), the records floor's work takes 2.31 of the "
                       "machine's 2 cores at both targets at once, 2.50 with the stub provinces' signature checks")


def test_the_provinces_checks_can_be_what_tips_it() -> None:
    verdict = floor_verdict(floors(no_work=(0.18, 0.17), signatures=(0.12, 0.11), records=(0.09, 0.09),
                                   cores_needed=1.9, with_checks=2.05))
    assert verdict.startswith("out of reach for any implementation whose provinces check the signatures they "
                              "receive: as they schedule themselves, relays doing nothing but the contract's Ed25519 "
                              "operations reach only submit_ratio 0.1200 < 0.15; ")


def test_a_floor_with_room_left_says_how_much_and_what_the_real_flow_spends() -> None:
    verdict = floor_verdict(floors(no_work=(0.2, 0.19), signatures=(0.18, 0.17), records=(0.16, 0.125),
                                   cores_needed=1.5, with_checks=1.7))
    assert verdict == ("within reach only of an implementation doing little more than the floor: scheduled "
                       "perfectly (submissions first), the records floor's work takes 1.50 of the machine's 2 "
                       "cores at both targets at once, 1.70 with the stub provinces' signature checks, leaving "
                       "3.00 ms of CPU a lifecycle for everything else the issues require (the real flow spends "
                       "4.00 ms)")
