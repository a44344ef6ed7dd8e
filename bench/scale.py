"""`make bench-scale`: the gateway at N committed transfers (bench.seed), on SQLite and PostgreSQL, measured with the
provinces' steady traffic running (bench.scale_measure); writes bench/results/scale.json with the targets of
issue 17 item 8 evaluated. Everything on 127.0.0.1; every process it starts is stopped, whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from bench import report, scale_people
from bench.phases import bind_giver_and_receiver
from bench.procs import PROJECT_ROOT, cpu_percent, machine_ticks
from bench.scale_measure import PROBE_ERRORS, Endpoints, Operators, measure, rss_mb
from bench.scale_targets import table, targets
from bench.seed import Party, Seeder
from bench.transfers import GANSU, GIVER, RECEIVER, XINJIANG, XINJIANG_KEY_ID, Pair
from gateway.store.engine import make_engine
from gateway.store.sealing import NoSealer
from gateway.store.unit_of_work import SqlStore
from gateway.usecases.audit import verify_audit
from gateway.usecases.monitoring import recount_totals
from scripts import launcher
from scripts.idgen import MAX_COUNT
from scripts.scratch_postgres import admin_url, scratch_database

# The giver's province lifts the daily limit and the blackout (D12 policy): the seeded history is one giver's,
# the traffic a hundred givers' many times a day, at any hour.
SCALE_POLICY = ["daily_transfer_limit = 1000000", "blackout_start_minute = 0", "blackout_end_minute = 0"]
# The figures item 8 names, printed after each run (all of them and more go to scale.json).
FIGURES = ("rows", "seed_s", "metrics_ms_median", "snapshot_ms_median", "stats_ms_median", "submit_p99_ms_quiet",
           "submit_p99_ms_scraped", "lifecycle_p99_ms_quiet", "lifecycle_p99_ms_scraped", "close_s",
           "submit_p99_ms_during_close", "lifecycle_p99_ms_during_close", "bytes_per_transfer", "rss_mb_start",
           "rss_mb_end")
VERIFY_AUDIT_UP_TO = 50_000  # rows up to which the whole audit chain is verified after seeding (minutes at 2M)


@dataclass(frozen=True)
class ScaleOptions:
    rows: tuple[int, ...] = (200_000, 2_000_000)
    databases: tuple[str, ...] = ("sqlite", "postgresql")
    seconds: float = 20.0  # each measured phase
    rounds: int = 4  # quiet and scraped phases, alternating (medians of the rounds: the machine is noisy)
    rate: float = 50.0  # the provinces' submissions a second
    givers: int = 100  # whose transfers they are, in turn (bench.scale_people)
    windows: int = 10  # daily settlement windows the rows are spread over, the last the one of now
    sign: bool = False  # real Ed25519 signatures on the seeded envelopes (bench.seed)
    merge: bool = False  # keep the output's runs of other sizes and databases (runs made one at a time)
    output: Path = PROJECT_ROOT / "bench" / "results" / "scale.json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ScaleOptions:
        """BENCH_SCALE_ROWS ("200000 2000000"), BENCH_SCALE_DATABASES ("sqlite postgresql"), BENCH_SCALE_SECONDS
        (20), BENCH_SCALE_ROUNDS (4), BENCH_SCALE_RATE (50), BENCH_SCALE_GIVERS (100), BENCH_SCALE_WINDOWS (10),
        BENCH_SCALE_SIGN (0), BENCH_SCALE_MERGE (0), BENCH_SCALE_OUTPUT (bench/results/scale.json); ValueError if
        bad."""
        d = cls()
        rows = tuple(int(n) for n in env.get("BENCH_SCALE_ROWS", " ".join(map(str, d.rows))).split())
        databases = tuple(env.get("BENCH_SCALE_DATABASES", " ".join(d.databases)).split())
        options = cls(rows, databases, float(env.get("BENCH_SCALE_SECONDS", d.seconds)),
                      int(env.get("BENCH_SCALE_ROUNDS", d.rounds)), float(env.get("BENCH_SCALE_RATE", d.rate)),
                      int(env.get("BENCH_SCALE_GIVERS", d.givers)),
                      int(env.get("BENCH_SCALE_WINDOWS", d.windows)), env.get("BENCH_SCALE_SIGN", "0") == "1",
                      env.get("BENCH_SCALE_MERGE", "0") == "1", Path(env.get("BENCH_SCALE_OUTPUT", str(d.output))))
        if not rows or any(n < options.windows * 10 for n in rows) or not set(databases) <= {"sqlite", "postgresql"}:
            raise ValueError("BENCH_SCALE_ROWS: sizes of at least 10 a window; BENCH_SCALE_DATABASES: sqlite and/or "
                             "postgresql")
        if max(rows) / options.windows > 900_000:  # the day of now's seeded rows and the traffic under the limit
            raise ValueError("over 900,000 rows a window: raise BENCH_SCALE_WINDOWS (the daily limit is 1,000,000)")
        if not (0 < options.seconds <= 600 and 1 <= options.rounds <= 10 and 0 < options.rate <= 500
                and 1 <= options.givers <= MAX_COUNT and 3 <= options.windows <= 60):
            raise ValueError(f"BENCH_SCALE_SECONDS in (0, 600], ROUNDS 1-10, RATE in (0, 500], GIVERS 1-{MAX_COUNT}, "
                             "WINDOWS 3-60")
        return options


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    """A new empty database of `kind`, dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'scale.db'}"
        return
    admin = admin_url()
    if admin is None:
        raise RuntimeError("PostgreSQL at 127.0.0.1:5432 (database test) is unreachable")
    with scratch_database(admin, "gongji_scale") as url:
        yield url


def check_rows(url: str, verify_chain: bool) -> dict[str, Any]:
    """The running totals recounted from the rows (`gongji db recount`), and the audit chain verified
    (`gongji audit verify`) when asked."""
    engine = make_engine(url)
    try:
        store = SqlStore(engine, NoSealer())
        differences = recount_totals(store.unit_of_work)
        found: dict[str, Any] = {"totals_agree": not differences, "totals_differences": differences[:10]}
        if verify_chain:
            from gateway.security.signing import verify_signature

            with store.unit_of_work(read_only=True) as uow:
                keys = {key.key_id: key.public_key for key in uow.gateway_keys.list()}
            audit = verify_audit(store.unit_of_work, keys, verify_signature)
            found |= {"audit_verified": audit.ok, "audit_entries": audit.entries}
        return found
    finally:
        engine.dispose()


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The bench's own reads, on a connection of their own outside any transaction (on SQLite the engine's
    transactions take the write lock, which the gateway's writers would wait for)."""
    engine = make_engine(url)
    try:
        raw = engine.raw_connection()
        try:
            cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
            marker = "%s" if engine.dialect.name == "postgresql" else "?"
            cursor.execute(sql.replace("?", marker), params)
            rows = [tuple(row) for row in cursor.fetchall()]
            if engine.dialect.name == "postgresql":
                raw.driver_connection.rollback()  # type: ignore[union-attr]
            return rows
        finally:
            raw.close()
    finally:
        engine.dispose()


def database_figures(url: str, workdir: Path) -> dict[str, Any]:
    """Transfers stored, the bindings they name, the database's bytes and bytes a transfer."""
    counted = query(url, "SELECT count(*), count(DISTINCT binding_id) FROM transfers")[0]  # one scan of the table
    transfers, bindings = int(counted[0]), int(counted[1])
    if url.startswith("postgresql"):
        size = int(query(url, "SELECT pg_database_size(current_database())")[0][0])
    else:
        size = sum(path.stat().st_size for path in workdir.glob("scale.db*"))
    return {"transfers_stored": transfers, "bindings_transferred_on": bindings, "database_bytes": size,
            "bytes_per_transfer": round(size / max(1, transfers), 1)}


def log_summary(text_: str, top: int = 12) -> dict[str, Any]:
    """The gateway's WARNING and ERROR lines, grouped by what they say (numbers and ids blanked): what went wrong
    during a run, if anything."""
    lines = [line for line in text_.splitlines() if " WARNING " in line or " ERROR " in line]
    shapes = Counter(re.sub(r"[0-9a-f]{8,}|\d+(\.\d+)?", "#", line.split(" ", 2)[-1])[:200] for line in lines)
    return {"warnings_and_errors": len(lines), "most_common": shapes.most_common(top)}


def last_event_id(url: str) -> int:
    return int(query(url, "SELECT max(id) FROM transfer_events")[0][0] or 0)


def sample_ids(url: str, window_id: str, count: int = 10) -> list[str]:
    return [str(row[0]) for row in query(url, "SELECT transfer_id FROM transfers WHERE settlement_window_id = ? "
                                              "LIMIT ?", window_id, count)]


@dataclass
class Turns:
    """The runs of one size: seeded at once (every database's seeding done before any is measured), then
    measured one at a time, nothing else of the bench running meanwhile."""

    seeded: asyncio.Barrier
    measuring: asyncio.Lock


async def one_run(kind: str, rows: int, options: ScaleOptions, turns: Turns) -> dict[str, Any]:
    """Seed `rows` into a new database of `kind`, run the stack on it, measure; every process stopped after."""
    workdir = Path(tempfile.mkdtemp(prefix=f"gongji-scale-{kind}-"))
    found: dict[str, Any] = {"database": kind, "rows": rows, "loadavg_before": list(os.getloadavg())}
    try:
        with database(kind, workdir) as url:
            gw, ops, web, xj, gs, xj_control, gs_control = launcher.free_ports(7)
            stack = launcher.Stack(workdir, url, [f"127.0.0.1:{gw}"], [f"127.0.0.1:{ops}"],
                                   {XINJIANG: f"127.0.0.1:{xj}", GANSU: f"127.0.0.1:{gs}"},
                                   {XINJIANG: f"127.0.0.1:{xj_control}", GANSU: f"127.0.0.1:{gs_control}"})
            try:
                found |= await _run_on(stack, url, workdir, rows, options, web, turns)
            finally:
                found["stopped_by_kill"] = stack.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    found["loadavg_after"] = list(os.getloadavg())
    return found


async def _run_on(stack: launcher.Stack, url: str, workdir: Path, rows: int, options: ScaleOptions,
                  web_port: int, turns: Turns) -> dict[str, Any]:
    env = {"GONGJI_METRICS_LISTEN": f"127.0.0.1:{web_port}", "GONGJI_LOG_LEVEL": "WARNING",
           "GONGJI_RATE_LIMIT_PER_SECOND": "0", "GONGJI_SQLITE_SYNCHRONOUS": "NORMAL",
           # Windows are closed by the bench (the older ones first, then the one measured), not by the clock.
           "GONGJI_SETTLEMENT_CLOSE_ON_SCHEDULE": "false"}
    found: dict[str, Any] = {}
    people = scale_people.people(options.givers)
    for province, seed in scale_people.seed_files(workdir, people).items():
        stack.add_stub(province, stack.gateway_addresses[0], "--seed", str(seed))
    stack.start(gateway_env=env, policies={XINJIANG: SCALE_POLICY})
    stack.close_channels()
    binding = await bind_giver_and_receiver(stack.stub_controls)  # the seeded history's pair
    pairs = await scale_people.bind(stack.stub_controls, people)  # the traffic's
    stack.gateway.terminate()  # the seeder is the only writer
    print(f"bench-scale: {stack.db_url.split(':')[0]} seeding {rows} transfers", file=sys.stderr, flush=True)
    engine = make_engine(url, "NORMAL")
    try:
        seeder = Seeder(engine, stack.keys_dir, Party(binding, GIVER, RECEIVER, XINJIANG, GANSU, XINJIANG_KEY_ID),
                        sign=options.sign)
        stop = threading.Event()
        try:  # in a thread: the loop stays free to take a SIGTERM or the run's time bound, which stop it
            seeded = await asyncio.to_thread(seeder.seed, rows, options.windows, None, stop)
        except asyncio.CancelledError:
            stop.set()
            raise
        raw = engine.raw_connection()
        try:
            dbapi: Any = raw.driver_connection
            if engine.dialect.name == "postgresql":  # what autovacuum would have done over the months seeded
                dbapi.autocommit = True
                dbapi.execute("VACUUM ANALYZE")
                # And its checkpoints: the seeding's and the vacuum's dirty pages written before the measurement,
                # not by a checkpoint spread over it (PostgreSQL's log showed one running through a whole run).
                dbapi.execute("CHECKPOINT")
            else:  # the log folded into the file, as the gateway's checkpoints do
                dbapi.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
    finally:
        engine.dispose()
    found |= {"seed_s": round(seeded.seconds, 1), "windows": seeded.windows}
    found |= {f"seeded_{key}": value for key, value in check_rows(url, rows <= VERIFY_AUDIT_UP_TO).items()}
    await turns.seeded.wait()
    async with turns.measuring:
        found["measured_from"] = datetime.now(UTC).isoformat(timespec="seconds")
        ticks = machine_ticks()
        found |= await _measure_on(stack, url, workdir, web_port, binding, pairs, seeded.windows, options)
        found["host_cpu_percent_measuring"] = cpu_percent(ticks, machine_ticks())
    return found


async def _measure_on(stack: launcher.Stack, url: str, workdir: Path, web_port: int, binding: str,
                      pairs: list[Pair], seeded_windows: dict[str, int], options: ScaleOptions) -> dict[str, Any]:
    found: dict[str, Any] = {}
    found["gateway_start_s"] = round(stack.start_gateway(0), 2)
    stack.close_channels()
    pid = stack.gateway.pid
    found["rss_mb_ready"] = rss_mb(pid)
    endpoints = Endpoints(stack.gateway_addresses[0], stack.ops_addresses[0], f"http://127.0.0.1:{web_port}",
                          stack.stub_controls, stack.keys_dir, binding, tuple(pairs))
    windows = list(seeded_windows)
    measured_window = windows[-2]  # the newest past window: 1/windows of the rows
    print(f"bench-scale: closing {len(windows) - 2} older windows", file=sys.stderr, flush=True)
    operators = Operators(endpoints)
    try:
        found["prepare_close_s"] = [round((await operators.close_window(window_id))[0], 2)
                                    for window_id in windows[:-2]]
    except PROBE_ERRORS as error:  # the windows stay open; the measurements go on
        found["prepare_close_error"] = str(error)[:200]
    finally:
        await operators.close()
    print("bench-scale: measuring", file=sys.stderr, flush=True)
    found |= await measure(endpoints, pid, rate=options.rate, seconds=options.seconds, rounds=options.rounds,
                           close_window=measured_window, transfer_ids=sample_ids(url, windows[0]),
                           last_event_id=lambda: last_event_id(url))
    found["close_window_rows"] = seeded_windows[measured_window]
    stack.gateway.terminate()  # a graceful stop: the outbox's last answers written
    found["gateway_log"] = log_summary(stack.gateway.output(since_start=False))
    found |= database_figures(url, workdir)
    found |= {f"after_{key}": value for key, value in check_rows(url, False).items()}
    return found


async def run(options: ScaleOptions) -> dict[str, Any]:
    """Every size on every database, one after the other; the output rewritten after each (a run stopped midway
    keeps the ones it finished, `complete` false). With `merge`, the output's runs of other sizes or databases are
    kept beside this run's."""
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    if task is not None:  # SIGTERM cancels the run like Ctrl-C: the stacks' finally blocks stop every process
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    result: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": report.machine(),
        "options": {**asdict(options), "output": str(options.output)}, "runs": {}, "complete": False}
    if options.merge and options.output.exists():
        earlier = json.loads(options.output.read_text(encoding="utf-8"))
        result["runs"] = earlier.get("runs", {})
        result["merged_from"] = [earlier.get("started_at"), *earlier.get("merged_from", [])]
    runs: dict[str, dict[str, Any]] = result["runs"]
    for rows in options.rows:
        turns = Turns(asyncio.Barrier(len(options.databases)), asyncio.Lock())

        async def one(kind: str, rows: int = rows, turns: Turns = turns) -> None:
            print(f"bench-scale: {kind}, {rows} rows", file=sys.stderr, flush=True)
            try:
                runs.setdefault(kind, {})[str(rows)] = found = await one_run(kind, rows, options, turns)
            except BaseException:
                await turns.seeded.abort()  # the others stop waiting for this one
                raise
            print(f"bench-scale: {kind}, {rows} rows: " + ", ".join(
                f"{key} {found.get(key)}" for key in FIGURES), file=sys.stderr, flush=True)
            result.update({"finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                           "loadavg_at_end": list(os.getloadavg()), "targets": targets(runs)})
            write(result, options.output)

        async with asyncio.TaskGroup() as group:  # one run failing stops the others (their stacks stopped)
            for kind in options.databases:
                group.create_task(one(kind))
    result["complete"] = True
    return result


def write(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def main() -> int:
    try:
        options = ScaleOptions.from_env()
    except ValueError as error:
        print(f"bench-scale: {error}", file=sys.stderr)
        return 2
    # Bounded: seeding at a few thousand transfers a second at worst, and a quarter of an hour a run beside it.
    bound_s = sum(rows / 1000 + 900 for rows in options.rows) * len(options.databases)
    started = time.monotonic()
    try:
        result = uvloop.run(asyncio.wait_for(run(options), bound_s))
    except TimeoutError:
        print(f"bench-scale: FAILED: longer than {bound_s:.0f} s", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench-scale: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    write(result, options.output)
    for line in result.get("targets", []):
        print(f"{'met   ' if line['met'] else 'MISSED'} {line['database']}: {line['target']}: {line['value']}")
    print(table(result["runs"]))
    print(f"written {options.output} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
