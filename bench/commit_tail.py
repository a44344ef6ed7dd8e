"""The audit chain's head under concurrent commits on PostgreSQL: the commit's tail as the gateway runs it (one
batch, the database chaining the entries), against the gateway chaining them (the head read in a first batch,
the entries and the COMMIT in a second) and against one round trip a statement, side by side in one run.

Every audited transaction locks the chain's one head row until its COMMIT, so how long the row is held bounds
how many such commits a second one database can make, and how long they queue. Each of
`--threads` threads makes, for `--seconds`, one unit of work after another shaped like a provinces' call's
ending: a read, a transfer's totals moved, one audit entry, the commit. Each round runs every way, in a rotating
order; each way's figures are the medians of its rounds.

    python -m bench.commit_tail [--threads 8] [--seconds 10] [--rounds 3] [--output bench/results/commit_tail.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

from bench.report import machine
from bench.scale_measure import ms
from gateway.domain.transfers import TransferState
from gateway.security.encryption import FieldCipher
from gateway.store.engine import make_engine
from gateway.store.prepared import Cursor
from gateway.store.schema import upgrade
from gateway.store.unit_of_work import SqlStore, SqlUnitOfWork
from scripts.scratch_postgres import admin_url, scratch_database

WAYS = ("batched", "chained_by_the_gateway", "one_by_one")


@contextlib.contextmanager
def one_statement_at_a_time(_cursor: Cursor) -> Iterator[None]:
    """The tail unbatched: each statement waits for its answer before the next is sent."""
    yield


@contextlib.contextmanager
def the_way(store: SqlStore, way: str) -> Iterator[None]:
    """`way` in force: "batched" as the gateway runs it; "chained_by_the_gateway" as on SQLite (the head read and
    locked in the batch, its answer awaited, then the entries, the head's move and the COMMIT); "one_by_one" as the
    gateway once ran it (chained by it, a round trip a statement)."""
    with contextlib.ExitStack() as patches:
        if way != "batched":
            patches.enter_context(mock.patch.object(store.statements, "chain_audit_in_database", None))
        if way == "one_by_one":
            patches.enter_context(mock.patch.object(Cursor, "batched", one_statement_at_a_time))
        yield


def one_round(store: SqlStore, way: str, threads: int, seconds: float, tag: str) -> dict[str, float]:
    """`threads` threads committing for `seconds`: commits a second, and the commits' p50 / p99 in ms."""
    latencies: list[float] = []
    failures: list[BaseException] = []
    ends = time.monotonic() + seconds

    def commit_over_and_over(thread: int) -> None:
        made: list[float] = []
        try:
            while time.monotonic() < ends:
                subject = f"{tag}-{thread}-{len(made)}"
                began = time.perf_counter()
                with SqlUnitOfWork(store) as uow:
                    uow.audit.head()
                    uow.totals.transfer_moved(subject, "650000", "620000", 100, None, TransferState.COMMITTED)
                    uow.audit.record("transfer", subject, "COMMITTED", datetime.now(UTC))
                    uow.commit()
                made.append(time.perf_counter() - began)
        except BaseException as error:  # reported after the round, which then fails
            failures.append(error)
        latencies.extend(made)  # list.extend is atomic under the GIL

    with the_way(store, way):
        workers = [threading.Thread(target=commit_over_and_over, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    if failures:
        raise RuntimeError(f"{len(failures)} threads failed in a {way} round: {failures[0]!r}")
    return {"commits": len(latencies), "commits_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": ms(latencies), "p99_ms": ms(latencies, 99)}


def run(url: str, threads: int, seconds: float, rounds: int) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        upgrade(engine)
        store = SqlStore(engine, FieldCipher.generate())
        measured: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
        for number in range(rounds):
            for way in WAYS[number % len(WAYS):] + WAYS[:number % len(WAYS)]:  # no way always goes first
                measured[way].append(one_round(store, way, threads, seconds, f"{way}-{number}"))
                print(f"commit-tail: round {number + 1} {way}: {measured[way][-1]}", file=sys.stderr, flush=True)
    finally:
        engine.dispose()
    medians = {way: {key: statistics.median(r[key] for r in measured[way]) for key in measured[way][0]}
               for way in WAYS}
    batched = medians["batched"]
    return {"threads": threads, "seconds": seconds, "rounds": rounds, "rounds_measured": measured,
            "medians": medians,
            **{f"batched_over_{way}": {key: round(batched[key] / medians[way][key], 2)
                                       for key in ("commits_per_s", "p50_ms", "p99_ms")} for way in WAYS[1:]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.commit_tail", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("bench/results/commit_tail.json"))
    options = parser.parse_args(argv)
    admin = admin_url()
    if admin is None:
        print("commit-tail: no PostgreSQL at 127.0.0.1:5432 (user postgres or root, database test)", file=sys.stderr)
        return 2
    started, host = datetime.now(UTC), machine()  # the load average before the run
    with scratch_database(admin, "gongji_commit_tail") as url:
        result = run(url, options.threads, options.seconds, options.rounds)
    result = {"started_at": started.isoformat(timespec="seconds"), "machine": host, **result,
              "loadavg_at_end": list(os.getloadavg())}
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key == "medians" or key.startswith("batched_")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
