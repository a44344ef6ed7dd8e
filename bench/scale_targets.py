"""The targets of issue 17 item 8, evaluated on scale.json's runs: at the largest size, each database."""

from __future__ import annotations

from typing import Any

READ_MS = 50.0  # /metrics, the snapshot and GetStats: median at the largest size
READ_GROWTH = 1.5  # ... and no more than this times their median at the smallest size
SCRAPED_P99 = 1.2  # submit p99 with the continuous scrape against without
CLOSE_S = 30.0
CLOSE_P99 = 2.0  # the provinces' p99 while the close runs against quiet
MEMORY_GROWTH = 1.10  # the gateway's RSS at the end against at the start of the measurements


def _line(database: str, target: str, value: float, limit: float) -> dict[str, Any]:
    return {"database": database, "target": target, "value": value, "limit": round(limit, 2),
            "met": bool(value <= limit)}


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
