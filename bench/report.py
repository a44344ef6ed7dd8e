"""What a run found, as latest.json, a Markdown page for the README to quote, and a console table."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import grpc

# The targets on the 2-core reference machine.
TARGETS = {"submit_ratio": 0.15, "lifecycle_ratio": 0.10}
ZERO_TARGETS = ("errors", "lost", "duplicated")


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "loadavg_at_start": load,
    }


REAL = ("gateway", "stub-650000", "stub-620000", "driver")
RELAYS = ("pipeline-gateway", "pipeline-650000", "pipeline-620000", "driver")
# Submit, Deliver, Confirm and a Notify to each province.
CALLS_PER_LIFECYCLE = 5
# Of the contract's Ed25519 operations per lifecycle (bench.run), the gateway's own share.
GATEWAY_SIGNATURES, GATEWAY_VERIFICATIONS = 5, 2


def _cpu_ms(report: dict[str, Any], phase: str, names: tuple[str, ...], per_second: float) -> float:
    """CPU milliseconds the named processes spent per item, during `phase`, at `per_second` items."""
    shares = report["cpu"].get(phase, {}).get("process_percent_of_one_core", {})
    return 10 * sum(shares.get(name, 0.0) for name in names) / per_second if per_second else 0.0


def budget(r: dict[str, Any]) -> dict[str, float]:
    """What a lifecycle may cost at the lifecycle target, against what its parts cost in this run.

    Whole machine: at `target_lifecycle_tps` every process together has nproc × 1000 ms of CPU per
    second. The flow's bare RPCs (the pipeline phase's CPU per lifecycle) and the contract's Ed25519
    operations (measured in this run) come first; what is left is the budget for everything else —
    storage, validation, idempotency, audit, encryption, in the gateway and both provinces — to be set
    against what that costs now. The same for the gateway process alone, which has one core.
    """
    ed = r["ed25519"]
    target_tps = TARGETS["lifecycle_ratio"] * r["echo_rps"]
    crypto_ms = (ed["signatures_per_lifecycle"] * ed["sign_us"]
                 + ed["verifications_per_lifecycle"] * ed["verify_us"]) / 1000
    # Per call served, times the five calls of a lifecycle: in the pipeline phase submissions run ahead
    # of the lifecycles they start, so CPU per completed lifecycle would count unfinished ones too.
    bare_lifecycles = r["pipeline"]["calls_per_second"] / CALLS_PER_LIFECYCLE
    bare_ms = _cpu_ms(r, "pipeline", RELAYS, bare_lifecycles)
    real_ms = _cpu_ms(r, "transfers", REAL, r["lifecycle_tps"])
    machine_ms = 1000 * r["machine"]["nproc"] / target_tps if target_tps else 0.0
    gw_crypto_ms = (GATEWAY_SIGNATURES * ed["sign_us"] + GATEWAY_VERIFICATIONS * ed["verify_us"]) / 1000
    gw_bare_ms = _cpu_ms(r, "pipeline", ("pipeline-gateway",), bare_lifecycles)
    gw_real_ms = _cpu_ms(r, "transfers", ("gateway",), r["lifecycle_tps"])
    gw_ms = 1000 / target_tps if target_tps else 0.0
    harness_other_ms = (real_ms - gw_real_ms) - (bare_ms - gw_bare_ms) - (crypto_ms - gw_crypto_ms)
    return {key: round(value, 2) for key, value in {
        "target_lifecycle_tps": target_tps,
        "machine_cpu_ms_per_lifecycle_at_target": machine_ms,
        "bare_rpcs_ms": bare_ms,
        "ed25519_ms": crypto_ms,
        "other_work_budget_ms": machine_ms - bare_ms - crypto_ms,
        "other_work_now_ms": real_ms - bare_ms - crypto_ms,
        "gateway_cpu_ms_per_lifecycle_at_target": gw_ms,
        "gateway_bare_rpcs_ms": gw_bare_ms,
        "gateway_ed25519_ms": gw_crypto_ms,
        "gateway_other_work_budget_ms": gw_ms - gw_bare_ms - gw_crypto_ms,
        "gateway_other_work_now_ms": gw_real_ms - gw_bare_ms - gw_crypto_ms,
        # The provinces and the driver take their part of the machine's budget first: what their own
        # work costs now (beyond their bare RPCs and Ed25519) leaves the rest to the gateway's.
        "harness_other_work_now_ms": harness_other_ms,
        "gateway_other_work_left_by_harness_ms": machine_ms - bare_ms - crypto_ms - harness_other_ms,
    }.items()}


def budget_verdict(b: dict[str, float]) -> str:
    """The budget in one sentence: is the lifecycle target within reach of any work in these processes?"""
    floor_ms = b["bare_rpcs_ms"] + b["ed25519_ms"]
    allowed_ms = b["machine_cpu_ms_per_lifecycle_at_target"]
    if b["other_work_budget_ms"] <= 0:
        return (f"out of reach on this machine-day: the bare RPCs and the contract's Ed25519 alone cost "
                f"{floor_ms:.2f} ms a lifecycle, more than the {allowed_ms:.2f} ms the target allows, "
                "before any storage or logic")
    if b["gateway_other_work_left_by_harness_ms"] <= 0:
        return (f"out of reach with this harness: the provinces' and driver's own work "
                f"({b['harness_other_work_now_ms']:.2f} ms) takes all of the {b['other_work_budget_ms']:.2f} ms "
                "left after the bare RPCs and Ed25519, leaving the gateway nothing")
    return (f"storage and logic must fall from {b['other_work_now_ms']:.2f} to {b['other_work_budget_ms']:.2f} ms "
            f"a lifecycle (× {b['other_work_budget_ms'] / b['other_work_now_ms']:.2f})"
            if b["other_work_now_ms"] > b["other_work_budget_ms"] else "within the budget")


FLOOR_PHASES = {
    "signatures": "nothing but the contract's Ed25519 operations",
    "records": "the contract's Ed25519 operations and the gateway's durable records",
}
FLOOR_RECORDS = ("floor-records-gateway", "floor-records-650000", "floor-records-620000", "driver")
FLOOR_SUBMISSIONS = ("floor-submit-gateway", "driver")



def floor_bound(r: dict[str, Any]) -> dict[str, float]:
    """The cores both targets at once would take if an implementation did only the records floor's work.

    The floor's relays run submissions and lifecycles at one rate; an implementation could put
    submissions first and let lifecycles lag. So the bound is taken per piece of work, not per phase:
    a submission's CPU (its own phase: the floor's gateway and the driver) at the submit target, plus the
    rest of a lifecycle's CPU (phase 'records', all four processes, per submission, less a submission's)
    at the lifecycle target, against every core of the machine fully busy. A submission measured alone
    runs at a higher rate than it would beside the lifecycles, and a call costs less at higher rates: the
    bound leans towards the targets. Then the same with the stub provinces' signature checks (this run's
    Ed25519 figure), and the CPU a lifecycle that leaves for everything else the issues require.
    """
    floors = r["floor"]
    echo = r["echo_rps"]
    cores = float(r["machine"]["nproc"])
    submission_ms = _cpu_ms(r, "floor-submit", FLOOR_SUBMISSIONS, floors["submissions"]["submit_tps"])
    lifecycle_ms = _cpu_ms(r, "floor-records", FLOOR_RECORDS, floors["records"]["submit_tps"])
    # The provinces' checks: the run's verifications a lifecycle (bench.run's count) less the gateway's own.
    ed = r["ed25519"]
    checks_ms = (ed["verifications_per_lifecycle"] - GATEWAY_VERIFICATIONS) * ed["verify_us"] / 1000
    submit_tps, lifecycle_tps = TARGETS["submit_ratio"] * echo, TARGETS["lifecycle_ratio"] * echo
    needed = (submit_tps * submission_ms + lifecycle_tps * (lifecycle_ms - submission_ms)) / 1000
    with_checks = needed + lifecycle_tps * checks_ms / 1000
    return {key: round(value, 3) for key, value in {
        "submission_cpu_ms": submission_ms,
        "lifecycle_cpu_ms": lifecycle_ms,
        "cores_needed_at_both_targets": needed,
        "province_checks_cpu_ms": checks_ms,
        "cores_needed_with_province_checks": with_checks,
        "cores": cores,
        # What every core fully busy leaves, a lifecycle at the lifecycle target, for all the rest.
        "left_for_the_rest_ms": 1000 * (cores - with_checks) / lifecycle_tps if lifecycle_tps else 0.0,
        # What the real flow spends a lifecycle beyond the floor and the provinces' checks (this run).
        "real_beyond_floor_ms": _cpu_ms(r, "transfers", REAL, r["lifecycle_tps"]) - lifecycle_ms - checks_ms,
    }.items()}


def floor_verdict(r: dict[str, Any]) -> str:
    """The floor in one sentence: could any implementation of the contract reach the targets here?

    bench.floor's relays do less than any implementation must (the provinces verify nothing, nothing is
    validated, audited or encrypted): what their work cannot reach even scheduled perfectly (floor_bound),
    no implementation can. How they fare as they schedule themselves is said first, for the record.
    """
    echo = r["echo_rps"]
    no_work = {"submit_ratio": r["pipeline_submit_tps"] / echo if echo else 0.0,
               "lifecycle_ratio": r["pipeline_lifecycle_ratio"]}
    clauses = []
    for what, ratios in [
        ("no work at all (bench.pipeline)", no_work),
        *((what, {key: r[f"floor_{phase}_{key}"] for key in TARGETS}) for phase, what in FLOOR_PHASES.items()),
    ]:
        short = [f"{key} {ratios[key]:.4f} < {target:.2f}" for key, target in TARGETS.items() if ratios[key] < target]
        if short:
            clauses.append(f"as they schedule themselves, relays doing {what} reach only {', '.join(short)}")
            break
    b = r["floor_bound"]
    clauses.append(f"scheduled perfectly (submissions first), the records floor's work takes "
                   f"{b['cores_needed_at_both_targets']:.2f} of the machine's {b['cores']:.0f} cores at both targets "
                   f"at once, {b['cores_needed_with_province_checks']:.2f} with the stub provinces' signature checks")
    if b["cores_needed_at_both_targets"] > b["cores"]:
        return "out of reach for any implementation of the contract on this machine: " + "; ".join(clauses)
    if b["cores_needed_with_province_checks"] > b["cores"]:
        return ("out of reach for any implementation whose provinces check the signatures they receive: "
                + "; ".join(clauses))
    return (f"within reach only of an implementation doing little more than the floor: {'; '.join(clauses)}, "
            f"leaving {b['left_for_the_rest_ms']:.2f} ms of CPU a lifecycle for everything else the issues require "
            f"(the real flow spends {b['real_beyond_floor_ms']:.2f} ms)")


def missed(report: dict[str, Any]) -> list[str]:
    """One line per target the run did not reach (a miss is a finding, not a failed run)."""
    lines = [
        f"{key} = {report[key]:.3f} < {target:.2f} (short by {target - report[key]:.3f})"
        for key, target in TARGETS.items()
        if report[key] < target
    ]
    lines.extend(f"{key} = {report[key]} (must be 0)" for key in ZERO_TARGETS if report[key] != 0)
    return lines


ECHO_DRIFT_LIMIT = 0.15  # echo rounds further apart than this: the machine's speed moved during the run


def noise(report: dict[str, Any], threshold: float = 20.0) -> list[str]:
    """Phases during which processes outside the bench used more than `threshold`% of one core, relay
    phases with failed calls, and echo rounds that disagree by more than ECHO_DRIFT_LIMIT (the machine
    itself slowed or sped up: this shows where no other process does, e.g. a neighbour on the same host)."""
    lines = [
        f"{phase}: other processes used {figures['others_percent_of_one_core']:.0f}% of one core"
        for phase, figures in report["cpu"].items()
        if figures.get("others_percent_of_one_core", 0.0) > threshold
    ]
    # A relay phase whose calls failed counts fewer lifecycles than its relays could carry.
    relay_phases = {"pipeline": report.get("pipeline", {}),
                    **{f"floor-{name}": figures for name, figures in report.get("floor", {}).items()}}
    lines.extend(f"{phase}: {figures['errors']} calls failed" for phase, figures in relay_phases.items()
                 if figures.get("errors"))
    rates = [echo_round["rps"] for echo_round in report.get("echo_rounds", [])]
    spread = max(rates) / min(rates) - 1 if len(rates) >= 2 and min(rates) > 0 else 0.0
    if spread > ECHO_DRIFT_LIMIT:
        lines.append(f"echo rounds {' / '.join(f'{rate:.0f}' for rate in rates)} rps differ by "
                     f"{100 * spread:.0f}% (> {100 * ECHO_DRIFT_LIMIT:.0f}%): the machine's speed moved during the run")
    return lines


def write(report: dict[str, Any], results_dir: Path) -> Path:
    """latest.json and latest.md, each written to a temporary name and renamed (never half a file)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    target = results_dir / "latest.json"
    tmp = results_dir / "latest.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(target)
    md_tmp = results_dir / "latest.md.tmp"
    md_tmp.write_text(markdown(report), encoding="utf-8")
    md_tmp.replace(results_dir / "latest.md")
    return target


def _cpu_line(cpu: dict[str, Any], phase: str) -> str:
    shares = cpu.get(phase, {}).get("process_percent_of_one_core", {})
    # The processes of other phases sit idle: only those that worked are worth a mention.
    return ", ".join(f"{name} {value:.0f}%" for name, value in sorted(shares.items(), key=lambda kv: -kv[1])
                     if value >= 1.0)


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    rows = [
        ("echo ceiling (rps, median of rounds)", f"{r['echo_rps']:.0f}"),
        ("submit (tps)", f"{r['submit_tps']:.0f}"),
        ("submit p50 / p99 (ms)", f"{r['submit_p50_ms']:.1f} / {r['submit_p99_ms']:.1f}"),
        ("lifecycle (tps, committed + both told within the window)", f"{r['lifecycle_tps']:.0f}"),
        ("lifecycle p50 / p99 (ms)", f"{r['lifecycle_p50_ms']:.0f} / {r['lifecycle_p99_ms']:.0f}"),
        ("submit_ratio (target ≥ 0.15)", f"{r['submit_ratio']:.3f}"),
        ("lifecycle_ratio (target ≥ 0.10)", f"{r['lifecycle_ratio']:.3f}"),
        (f"submit (tps) with {r['stalled_watchers']} unread WatchTransfers streams open, and its ratio to the "
         "mean of the phases before and after without them",
         f"{r['stalled_watchers_submit_tps']:.0f} ({r['stalled_watchers_submit_ratio']:.2f})"),
        ("the same five RPCs through relays doing no work (bench.pipeline): lifecycle tps, its ratio to the "
         "echo, and the real flow's share of it",
         f"{r['pipeline_lifecycle_tps']:.0f} ({r['pipeline_lifecycle_ratio']:.3f}; "
         f"{r['lifecycle_share_of_pipeline']:.2f})"),
        ("the floor (bench.floor): the same relays doing nothing but the contract's Ed25519 operations — "
         "submit and lifecycle ratios to the echo",
         f"{r['floor_signatures_submit_ratio']:.3f} / {r['floor_signatures_lifecycle_ratio']:.3f}"),
        ("the floor with the gateway's durable records too (idempotency key and transfer committed before each "
         "answer, acknowledgements in batches) — submit and lifecycle ratios",
         f"{r['floor_records_submit_ratio']:.3f} / {r['floor_records_lifecycle_ratio']:.3f}"),
        ("the records floor's CPU a submission / a lifecycle (ms); the cores both targets at once would take with "
         "submissions first, then with the stub provinces' signature checks, of the machine's; the CPU a lifecycle "
         "that leaves for everything else / what the real flow spends on it (ms)",
         f"{r['floor_bound']['submission_cpu_ms']:.2f} / {r['floor_bound']['lifecycle_cpu_ms']:.2f}; "
         f"{r['floor_bound']['cores_needed_at_both_targets']:.2f}, "
         f"{r['floor_bound']['cores_needed_with_province_checks']:.2f} of {r['floor_bound']['cores']:.0f}; "
         f"{r['floor_bound']['left_for_the_rest_ms']:.2f} / {r['floor_bound']['real_beyond_floor_ms']:.2f}"),
        ("the targets against the floor", floor_verdict(r)),
        ("CPU per lifecycle for storage and logic (all processes): allowed at the lifecycle target, after the "
         "bare RPCs and the contract's Ed25519 operations / spent now (ms)",
         f"{r['budget']['other_work_budget_ms']:.2f} / {r['budget']['other_work_now_ms']:.2f}"),
        ("the same for the gateway process alone (one core)",
         f"{r['budget']['gateway_other_work_budget_ms']:.2f} / {r['budget']['gateway_other_work_now_ms']:.2f}"),
        ("the provinces' and the driver's own work now (beyond their bare RPCs and Ed25519), and what it "
         "leaves of the machine's budget for the gateway's storage and logic (ms)",
         f"{r['budget']['harness_other_work_now_ms']:.2f} / "
         f"{r['budget']['gateway_other_work_left_by_harness_ms']:.2f}"),
        ("the lifecycle target on this machine-day", budget_verdict(r["budget"])),
        ("errors / lost / duplicated", f"{r['errors']} / {r['lost']} / {r['duplicated']}"),
    ]
    lines = [
        "# Latest `make bench` figures",
        "",
        f"Run {r['started_at']}: {r['bench_seconds']:g} s per phase, {r['concurrency']} calls in flight, "
        f"on {m['nproc']} × {m['cpu_model'] or 'unknown CPU'} (Linux {m['kernel']}, Python {m['python']}, "
        f"grpcio {m['grpcio']}). Gateway, both stub provinces, the echo server and the driver share "
        "these cores.",
        "",
        "| measure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        f"CPU during the transfer phase (% of one core): {_cpu_line(r['cpu'], 'transfers')}; "
        f"other processes on the machine: {r['cpu'].get('transfers', {}).get('others_percent_of_one_core', 0):.0f}%.",
        "",
        f"Method: {r['method']['phases']} Written by `make bench` to `bench/results/latest.json`.",
        "",
    ]
    if r.get("noisy_phases"):
        lines += ["Noise: " + "; ".join(r["noisy_phases"]) + " (figures less trustworthy; run again).", ""]
    return "\n".join(lines)


def summary(r: dict[str, Any]) -> str:
    rounds = ", ".join(f"{e['rps']:.0f}" for e in r["echo_rounds"])
    bound = r["floor_bound"]
    lines = [
        f"{'echo_rps':<18}{r['echo_rps']:>10.0f}   rounds: {rounds}",
        f"{'submit_tps':<18}{r['submit_tps']:>10.0f}   p50 {r['submit_p50_ms']:.1f} ms, "
        f"p99 {r['submit_p99_ms']:.1f} ms",
        f"{'lifecycle_tps':<18}{r['lifecycle_tps']:>10.0f}   p50 {r['lifecycle_p50_ms']:.0f} ms, "
        f"p99 {r['lifecycle_p99_ms']:.0f} ms (drained rate {r['lifecycle_tps_drained']:.0f}/s)",
        f"{'submit_ratio':<18}{r['submit_ratio']:>10.3f}   target ≥ {TARGETS['submit_ratio']}",
        f"{'lifecycle_ratio':<18}{r['lifecycle_ratio']:>10.3f}   target ≥ {TARGETS['lifecycle_ratio']}",
        f"{'stalled watchers':<18}{r['stalled_watchers_submit_tps']:>10.0f}   submit tps with "
        f"{r['stalled_watchers']} unread watch streams open (after: {r['submit_tps_after']:.0f}); "
        f"ratio to the phases around it "
        f"{r['stalled_watchers_submit_ratio']:.2f}",
        f"{'pipeline':<18}{r['pipeline_lifecycle_tps']:>10.0f}   lifecycles/s through relays doing no work "
        f"(submit {r['pipeline_submit_tps']:.0f}/s): ratio {r['pipeline_lifecycle_ratio']:.3f} to the echo; "
        f"the real flow reaches {r['lifecycle_share_of_pipeline']:.2f} of it",
        f"{'floor':<18}{r['floor']['records']['lifecycle_tps']:>10.0f}   lifecycles/s through relays doing only "
        f"the contract's Ed25519 and the gateway's durable records "
        f"(submit {r['floor']['records']['submit_tps']:.0f}/s): "
        f"ratios {r['floor_records_submit_ratio']:.3f} / {r['floor_records_lifecycle_ratio']:.3f}; Ed25519 alone, "
        f"nothing stored: {r['floor_signatures_submit_ratio']:.3f} / {r['floor_signatures_lifecycle_ratio']:.3f}",
        f"{'floor bound':<18}{bound['cores_needed_at_both_targets']:>10.2f}   cores both targets at once would "
        f"take doing only the records floor's work, submissions first (a submission "
        f"{bound['submission_cpu_ms']:.2f} ms of CPU, a lifecycle {bound['lifecycle_cpu_ms']:.2f} ms; "
        f"submissions alone {r['floor']['submissions']['submit_tps']:.0f}/s); "
        f"{bound['cores_needed_with_province_checks']:.2f} with the stubs' signature checks; the machine has "
        f"{bound['cores']:.0f}, leaving {bound['left_for_the_rest_ms']:.2f} ms a lifecycle for the rest "
        f"(the real flow spends {bound['real_beyond_floor_ms']:.2f})",
        f"{'':<18}{'':>10}   {floor_verdict(r)}",
        f"{'budget':<18}{r['budget']['target_lifecycle_tps']:>10.0f}   lifecycles/s at the target: "
        f"{r['budget']['machine_cpu_ms_per_lifecycle_at_target']:.2f} ms of CPU each = bare RPCs "
        f"{r['budget']['bare_rpcs_ms']:.2f} + Ed25519 {r['budget']['ed25519_ms']:.2f} + the rest "
        f"{r['budget']['other_work_budget_ms']:.2f} (now {r['budget']['other_work_now_ms']:.2f}); gateway alone "
        f"{r['budget']['gateway_cpu_ms_per_lifecycle_at_target']:.2f} = {r['budget']['gateway_bare_rpcs_ms']:.2f} + "
        f"{r['budget']['gateway_ed25519_ms']:.2f} + {r['budget']['gateway_other_work_budget_ms']:.2f} "
        f"(now {r['budget']['gateway_other_work_now_ms']:.2f}); the provinces and driver take "
        f"{r['budget']['harness_other_work_now_ms']:.2f} of the rest, leaving the gateway "
        f"{r['budget']['gateway_other_work_left_by_harness_ms']:.2f}",
        f"{'':<18}{'':>10}   {budget_verdict(r['budget'])}",
        f"{'submitted':<18}{r['submitted']:>10}   accepted {r['accepted']}",
        f"{'errors':<18}{r['errors']:>10}   {r['error_codes'] or ''}",
        f"{'lost':<18}{r['lost']:>10}   {_nonzero(r['lost_detail'])}",
        f"{'duplicated':<18}{r['duplicated']:>10}   {_nonzero(r['duplicated_detail'])}",
        f"{'redelivered':<18}{r['redelivered']:>10}   {_nonzero(r['redelivered_detail'])}",
        f"{'outbox_pending':<18}{r['outbox_pending']:>10}",
        f"cpu (transfers):  {_cpu_line(r['cpu'], 'transfers')}; "
        f"machine {r['cpu'].get('transfers', {}).get('machine_busy_percent', 0):.0f}% busy",
    ]
    return "\n".join(lines)


def _nonzero(detail: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in detail.items() if v) or ""
