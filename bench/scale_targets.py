"""The targets of issue 17 item 8, evaluated on scale.json's runs: at the largest size, each database."""

from __future__ import annotations

from typing import Any

READ_MS = 50.0  # /metrics, the snapshot and GetStats: median at the largest size
READ_GROWTH = 1.5  # ... and no more than this times their median at the smallest size
SCRAPED_P99 = 1.2  # submit p99 with the continuous scrape against without
CLOSE_S = 30.0
CLOSE_P99 = 2.0  # the provinces' p99 while the close runs against quiet
MEMORY_GROWTH = 1.10  # the gateway's RSS at the end against at the start of the measurements


def _line(database: str, target: str, value: float | None, limit: float) -> dict[str, Any]:
    """One target: met when the value is known and within the limit (a failed measurement is no value)."""
    return {"database": database, "target": target, "value": value, "limit": round(limit, 2),
            "met": value is not None and value <= limit}


def targets(runs: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for database, sizes in runs.items():
        if not sizes:
            continue
        largest, smallest = max(sizes, key=int), min(sizes, key=int)
        big, small = sizes[largest], sizes[smallest]
        for read in ("metrics", "snapshot", "stats"):
            key = f"{read}_ms_median"
            lines.append(_line(database, f"{key} at {largest} rows <= {READ_MS:g} ms", big[key], READ_MS))
            if largest != smallest:
                lines.append(_line(database, f"{key} at {largest} rows <= {READ_GROWTH} x at {smallest} "
                                             f"({small[key]} ms)", big[key], READ_GROWTH * small[key]))
        lines.append(_line(database, f"submit_p99_ms_scraped <= {SCRAPED_P99} x submit_p99_ms_quiet "
                                     f"({big['submit_p99_ms_quiet']} ms) at {largest} rows",
                           big["submit_p99_ms_scraped"], SCRAPED_P99 * big["submit_p99_ms_quiet"]))
        lines.append(_line(database, f"close_s of a window of {big.get('close_window_rows', '?')} rows at {largest} "
                                     f"rows <= {CLOSE_S:g} s", big["close_s"], CLOSE_S))
        for kind in ("submit", "lifecycle"):
            quiet = big[f"{kind}_p99_ms_quiet"]
            lines.append(_line(database, f"{kind}_p99_ms_during_close <= {CLOSE_P99} x {kind}_p99_ms_quiet "
                                         f"({quiet} ms) at {largest} rows", big[f"{kind}_p99_ms_during_close"],
                               CLOSE_P99 * quiet))
        lines.append(_line(database, f"rss_mb_end <= {MEMORY_GROWTH} x rss_mb_start ({big['rss_mb_start']} MB) at "
                                     f"{largest} rows", big["rss_mb_end"], MEMORY_GROWTH * big["rss_mb_start"]))
    return lines


# The table docs/benchmark.md quotes: (heading, key in a run's figures).
TABLE: tuple[tuple[str, str | tuple[str, str]], ...] = (
    ("seed s", "seed_s"),
    ("/metrics ms (median / max)", ("metrics_ms_median", "metrics_ms_max")),
    ("snapshot ms", ("snapshot_ms_median", "snapshot_ms_max")),
    ("GetStats ms", ("stats_ms_median", "stats_ms_max")),
    ("submit p50 / p99 ms, quiet", ("submit_p50_ms_quiet", "submit_p99_ms_quiet")),
    ("submit p50 / p99 ms, scraped", ("submit_p50_ms_scraped", "submit_p99_ms_scraped")),
    ("submit p50 / p99 ms, scraped without `gongji stats`", ("submit_p50_ms_scraped_no_cli",
                                                            "submit_p99_ms_scraped_no_cli")),
    ("submit p50 / p99 ms, scraped, `gongji stats` at the caller's priority", ("submit_p50_ms_scraped_cli_nice0",
                                                                             "submit_p99_ms_scraped_cli_nice0")),
    ("lifecycle p50 / p99 ms, quiet", ("lifecycle_p50_ms_quiet", "lifecycle_p99_ms_quiet")),
    ("lifecycle p50 / p99 ms, scraped", ("lifecycle_p50_ms_scraped", "lifecycle_p99_ms_scraped")),
    ("ListTransfers newest page ms", ("list_newest_ms_median", "list_newest_ms_max")),
    ("GetTransfer ms", ("get_transfer_ms_median", "get_transfer_ms_max")),
    ("WatchTransfers resumed ms", ("watch_resumed_ms_median", "watch_resumed_ms_max")),
    ("close s (window rows)", ("close_s", "close_window_rows")),
    ("submit / lifecycle p99 ms during the close", ("submit_p99_ms_during_close", "lifecycle_p99_ms_during_close")),
    ("bytes a transfer", "bytes_per_transfer"),
    ("RSS MB start / end", ("rss_mb_start", "rss_mb_end")),
    ("load average before / after", ("loadavg_before", "loadavg_after")),
)


def _cell(run: dict[str, Any], key: str | tuple[str, str]) -> str:
    def one(name: str) -> str:
        value = run.get(name, "")
        return f"{value[0]:.1f}" if isinstance(value, list) and value else f"{value:g}" if isinstance(
            value, float) else str(value)
    return one(key) if isinstance(key, str) else " / ".join(one(name) for name in key)


def table(runs: dict[str, dict[str, dict[str, Any]]]) -> str:
    """scale.json's runs as a Markdown table, one column per database and size."""
    columns = [(database, size) for database, sizes in runs.items() for size in sorted(sizes, key=int)]
    lines = ["| measure | " + " | ".join(f"{database} {int(size):,}" for database, size in columns) + " |",
             "|---|" + "---|" * len(columns)]
    lines += [f"| {heading} | " + " | ".join(_cell(runs[d][s], key) for d, s in columns) + " |"
              for heading, key in TABLE]
    return "\n".join(lines)
