"""`make bench-scale`'s whole path at 2,000 rows on each database: the seeded totals agree with a recount, the
audit chain verifies, and scale.json has every figure and target (written to a temporary file only)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.procs import PROJECT_ROOT
from bench.scale import ScaleOptions, run
from tests.support import DATABASES, required_postgres_admin_url

REQUIRED = ("rows", "metrics_ms_median", "snapshot_ms_median", "stats_ms_median", "submit_p99_ms_quiet",
            "submit_p99_ms_scraped", "lifecycle_p99_ms_scraped", "close_s", "bytes_per_transfer", "rss_mb_start",
            "rss_mb_end")
PUBLISHED = PROJECT_ROOT / "bench" / "results" / "scale.json"


@pytest.mark.parametrize("database", DATABASES)
def test_the_scale_bench_at_two_thousand_rows(database: str, tmp_path: Path) -> None:
    if database == "postgresql":
        required_postgres_admin_url("the scale bench's PostgreSQL test skipped")
    published = PUBLISHED.stat().st_mtime_ns if PUBLISHED.exists() else None
    output = tmp_path / "scale.json"
    options = ScaleOptions(rows=(2000,), databases=(database,), seconds=1.0, rounds=1, rate=20.0, givers=10,
                           output=output)

    result = asyncio.run(asyncio.wait_for(run(options), 240))
    written = json.loads(output.read_text(encoding="utf-8"))
    assert result["complete"] and written["runs"] == json.loads(json.dumps(result["runs"]))

    figures = result["runs"][database]["2000"]
    assert [key for key in REQUIRED if key not in figures] == []
    assert figures["rows"] == 2000 and sum(figures["windows"].values()) == 2000
    assert figures["seeded_totals_agree"], figures["seeded_totals_differences"]
    assert figures["seeded_audit_verified"] and figures["seeded_audit_entries"] >= 3 * 2000
    assert figures["after_totals_agree"], figures["after_totals_differences"]
    assert figures["transfers_stored"] >= 2000 and figures["bytes_per_transfer"] > 0
    # The traffic is the ten givers' in turn, the seeded history the seeds' pair's.
    assert figures["bindings_transferred_on"] == 10 + 1
    assert figures["close_state"] == "SETTLEMENT_WINDOW_STATE_CLOSED" and figures["close_window_rows"] == 200
    assert figures["errors_quiet"] == figures["errors_scraped"] == figures["errors_scraped_no_cli"] == \
        figures["errors_scraped_cli_nice0"] == 0, figures["rounds"]
    assert figures["probe_failures"] == {}, figures["probe_failures"]
    assert figures["incomplete_quiet"] == figures["incomplete_scraped"] == figures["incomplete_scraped_no_cli"] == \
        figures["incomplete_scraped_cli_nice0"] == 0, figures["rounds"]
    assert len(figures["rounds"]["scraped_no_cli"]) == 1 and figures["submitted_scraped_no_cli"] == 20
    assert len(figures["rounds"]["scraped_cli_nice0"]) == 1 and figures["submitted_scraped_cli_nice0"] == 20
    shares = figures["host_cpu_percent_measuring"]
    assert set(shares) == {"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"}
    assert 99 <= sum(shares.values()) <= 101 and shares["user"] > 0, shares
    assert {line["database"] for line in result["targets"]} == {database}
    assert all(set(line) == {"database", "target", "value", "limit", "met"} for line in result["targets"])
    assert output.exists()
    assert (PUBLISHED.stat().st_mtime_ns if PUBLISHED.exists() else None) == published
