"""What a run found, as latest.json, a Markdown page for the documents to quote, and a console table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

import grpc

# Counts that must be 0 in every run: a miss is a broken product, not a slow one.
ZERO_TARGETS = ("errors", "lost", "duplicated", "consume_errors", "consume_overdrawn", "consume_lost")
# The checkout path's target on this machine (issue 18): a consumption's p99 at a steady 100 a second.
CONSUME_P99_TARGET_MS = 50.0


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
        "uptime_at_start": uptime(),
    }


def uptime() -> str:
    """`uptime`'s line: the machine is shared, and its load says how far to trust the figures."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _share(part: float, whole: float, digits: int) -> float:
    return round(part / whole, digits) if whole else 0.0


def ratios(f: dict[str, Any]) -> dict[str, float]:
    """The figures that set one phase against another: the goal (the real flow's share of the floor,
    measured in the same run), and every rate's ratio to the echo, the median of its rounds."""
    echo = statistics.median(echo_round["rps"] for echo_round in f["echo_rounds"])
    # The phase with stalled watch streams against the mean of the phases before and after it.
    bracket = (f["submit_tps"] + f["submit_tps_after"]) / 2
    return {
        "floor_share_submit": _share(f["submit_tps"], f["floor_submit_tps"], 3),
        "floor_share_lifecycle": _share(f["lifecycle_tps"], f["floor_lifecycle_tps"], 3),
        "echo_rps": round(echo, 1),
        "submit_ratio": _share(f["submit_tps"], echo, 4),
        "lifecycle_ratio": _share(f["lifecycle_tps"], echo, 4),
        "floor_submit_ratio": _share(f["floor_submit_tps"], echo, 4),
        "floor_lifecycle_ratio": _share(f["floor_lifecycle_tps"], echo, 4),
        "pipeline_lifecycle_ratio": _share(f["pipeline_lifecycle_tps"], echo, 4),
        "lifecycle_share_of_pipeline": _share(f["lifecycle_tps"], f["pipeline_lifecycle_tps"], 3),
        "stalled_watchers_submit_ratio": _share(f["stalled_watchers_submit_tps"], bracket, 3),
        "consume_ratio": _share(f["consume_tps"], echo, 4),
    }


def missed(report: dict[str, Any]) -> list[str]:
    """One line per count that must be 0 and is not, and the consumptions' p99 if above its target."""
    lines = [f"{key} = {report[key]} (must be 0)" for key in ZERO_TARGETS if report[key] != 0]
    if report["consume_p99_ms"] > CONSUME_P99_TARGET_MS:
        lines.append(f"consume_p99_ms = {report['consume_p99_ms']:g} at 100/s (target <= {CONSUME_P99_TARGET_MS:g})")
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
    relay_phases = {"pipeline": report.get("pipeline", {}), "floor-records": report.get("floor", {})}
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


def _rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The figures worth quoting, as (short name, measure, value)."""
    rounds = ", ".join(f"{e['rps']:.0f}" for e in r["echo_rounds"])
    return [
        ("floor share", "the real flow's share of the floor, submit / lifecycle (the goal)",
         f"**{r['floor_share_submit']:.2f} / {r['floor_share_lifecycle']:.2f}**"),
        ("echo", "echo ceiling (rps, median of the rounds)", f"{r['echo_rps']:.0f} (rounds {rounds})"),
        ("submit", "submit (tps; p50 / p99 ms)",
         f"{r['submit_tps']:.0f} ({r['submit_p50_ms']:.1f} / {r['submit_p99_ms']:.1f})"),
        ("lifecycle", "lifecycle: COMMITTED and both provinces told within the window (tps; p50 / p99 ms)",
         f"{r['lifecycle_tps']:.0f} ({r['lifecycle_p50_ms']:.0f} / {r['lifecycle_p99_ms']:.0f})"),
        ("ratios to echo", "submit_ratio / lifecycle_ratio (to the echo)",
         f"{r['submit_ratio']:.3f} / {r['lifecycle_ratio']:.3f}"),
        ("pipeline", "pipeline: the five RPCs through relays doing no work (lifecycles/s; ratio to the echo)",
         f"{r['pipeline_lifecycle_tps']:.0f} ({r['pipeline_lifecycle_ratio']:.3f})"),
        ("floor", "floor: relays doing only the contract's Ed25519 and the gateway's durable records "
         "(submissions / lifecycles per s; ratios to the echo)",
         f"{r['floor_submit_tps']:.0f} / {r['floor_lifecycle_tps']:.0f} "
         f"({r['floor_submit_ratio']:.3f} / {r['floor_lifecycle_ratio']:.3f})"),
        ("stalled watchers", f"submit with {r['stalled_watchers']} unread WatchTransfers streams open (tps; ratio "
         "to the phases before and after)",
         f"{r['stalled_watchers_submit_tps']:.0f} ({r['stalled_watchers_submit_ratio']:.2f})"),
        ("errors/lost/dup", "errors / lost / duplicated (must be 0)",
         f"{r['errors']} / {r['lost']} / {r['duplicated']}"),
        ("consume", f"consumptions: p50 / p99 at {r['consume_steady']['rate']:g} a second (ms); as fast as "
         f"{r['consume_max']['concurrency']} in flight go (per s; ratio to the echo)",
         f"{r['consume_p50_ms']:.1f} / {r['consume_p99_ms']:.1f}; {r['consume_tps']:.0f} ({r['consume_ratio']:.3f})"),
        ("consume checks", "consumptions: errors / over-drawn / lost (must be 0); calls sent again after HTTP/2 "
         "refused their stream", f"{r['consume_errors']} / {r['consume_overdrawn']} / {r['consume_lost']}; "
         f"{r['consume_resent']} resent"),
    ]


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Latest `make bench` figures",
        "",
        f"Run {r['started_at']}: {r['bench_seconds']:g} s per phase, {r['concurrency']} calls in flight, "
        f"on {m['nproc']} × {m['cpu_model'] or 'unknown CPU'} (Linux {m['kernel']}, Python {m['python']}, "
        f"grpcio {m['grpcio']}). Every process shares these cores.",
        "",
        "| measure | value |",
        "|---|---|",
        *(f"| {measure} | {value} |" for _, measure, value in _rows(r)),
        "",
        f"CPU during the transfer phase (% of one core): {_cpu_line(r['cpu'], 'transfers')}; "
        f"other processes on the machine: {r['cpu'].get('transfers', {}).get('others_percent_of_one_core', 0):.0f}%.",
        "",
        f"CPU during the consumptions, 100 a second: {_cpu_line(r['cpu'], 'consumptions-steady')}; as fast as they "
        f"go: {_cpu_line(r['cpu'], 'consumptions-max')}. Load: {m.get('uptime_at_start', '')} (at the start); "
        f"{r.get('uptime_before_consumptions', '')} (before the consumptions).",
        "",
        "| phase | what runs | how long |",
        "|---|---|---|",
        *(f"| {p['name']} | {p['runs']} | {p['duration']} |" for p in r["phases"]),
        "",
        "Written by `make bench` to `bench/results/latest.json`; the method is in docs/benchmark.md.",
        "",
    ]
    if r.get("noisy_phases"):
        lines += ["Noise: " + "; ".join(r["noisy_phases"]) + " (figures less trustworthy; run again).", ""]
    return "\n".join(lines)


def summary(r: dict[str, Any]) -> str:
    lines = [f"{short:<18}{value.replace('**', '')}" for short, _, value in _rows(r)]
    lines += [
        f"{'redelivered':<18}{r['redelivered']}; outbox pending {r['outbox_pending']}",
        *([f"{'error codes':<18}{r['error_codes']}"] if r["error_codes"] else []),
        *(f"{key:<18}{_nonzero(r[f'{key}_detail'])}" for key in ("lost", "duplicated", "redelivered", "consume_lost",
                                                                  "consume_overdrawn")
          if _nonzero(r[f"{key}_detail"])),
        *([f"{'consume codes':<18}{r['consume_error_codes']}"] if r["consume_error_codes"] else []),
        f"{'cpu (transfers)':<18}{_cpu_line(r['cpu'], 'transfers')}; "
        f"machine {r['cpu'].get('transfers', {}).get('machine_busy_percent', 0):.0f}% busy",
        f"{'cpu (consume)':<18}{_cpu_line(r['cpu'], 'consumptions-max')}; "
        f"machine {r['cpu'].get('consumptions-max', {}).get('machine_busy_percent', 0):.0f}% busy",
        f"{'uptime':<18}{r.get('uptime_before_consumptions', '')}",
    ]
    return "\n".join(lines)


def _nonzero(detail: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in detail.items() if v) or ""
