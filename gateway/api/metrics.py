"""Prometheus metrics (served by gateway.api.web): RPCs as they happen, transfers, outbox and quotas at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.domain.monitoring import Stats

log = logging.getLogger(__name__)


class RpcMetrics:
    """Counts and times every RPC by method and status code (fed by the error-mapping interceptor)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._calls = Counter("gongji_rpc", "RPCs handled, by method and status code", ["method", "code"],
                              registry=registry)
        self._seconds = Histogram("gongji_rpc_duration_seconds", "RPC handling time, by method", ["method"],
                                  registry=registry,
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def observe(self, method: str, code: str, seconds: float) -> None:
        self._calls.labels(method, code).inc()
        self._seconds.labels(method).observe(seconds)


class StateCollector(Collector):
    """Reads the database when scraped, so the figures are the database's, never a second count."""

    def __init__(self, read_stats: Callable[[], Stats]) -> None:
        self._read_stats = read_stats

    def collect(self) -> Iterator[Any]:
        stats = self._read_stats()
        transfers = GaugeMetricFamily("gongji_transfers", "Transfers by state and province pair",
                                      labels=["state", "giver_province", "receiver_province"])
        amounts = GaugeMetricFamily("gongji_transfers_amount_fen", "Transfer amounts (fen) by state and pair",
                                    labels=["state", "giver_province", "receiver_province"])
        for figure in stats.transfers:
            labels = [figure.state.value, figure.giver_province, figure.receiver_province]
            transfers.add_metric(labels, figure.count)
            amounts.add_metric(labels, figure.amount_fen)
        yield transfers
        yield amounts
        yield GaugeMetricFamily("gongji_outbox_backlog", "Outbox messages not yet acknowledged",
                                value=stats.outbox_backlog)
        failures = GaugeMetricFamily("gongji_outbox_failed_attempts", "Failed delivery attempts by destination",
                                     labels=["province"])
        for province, count in sorted(stats.failed_attempts_by_province.items()):
            failures.add_metric([province], count)
        yield failures
        windows = GaugeMetricFamily("gongji_settlement_windows", "Settlement windows by state", labels=["state"])
        for state, count in sorted(stats.settlement_windows.items()):
            windows.add_metric([state], count)
        yield windows
        quotas = GaugeMetricFamily("gongji_quota_fen", "Quota figures (fen) by province pair: granted, consumed, "
                                   "released, available (Q3)", labels=["figure", "giver_province", "receiver_province"])
        consumptions = GaugeMetricFamily("gongji_quota_consumptions", "Consumptions recorded, by province pair",
                                         labels=["giver_province", "receiver_province"])
        for pair in stats.quota_pairs:
            b, where = pair.balance, [pair.giver_province, pair.receiver_province]
            for name, value in (("granted", b.granted_fen), ("consumed", b.consumed_fen),
                                ("released", b.released_fen), ("available", b.available_fen)):
                quotas.add_metric([name, *where], value)
            consumptions.add_metric(where, pair.consumption_count)
        yield quotas
        yield consumptions
        months = GaugeMetricFamily("gongji_clearing_months", "Quota clearing months (Q10) by state; they are counted "
                                   "among gongji_settlement_windows too", labels=["state"])
        for state, count in sorted(stats.clearing_months.items()):
            months.add_metric([state], count)
        yield months


class OutboxSendCollector(Collector):
    """This process's outbox sends by how its loop got each message: handed over at the commit that wrote
    it, or found by a claim (retries, binding and settlement messages, what another process left); and the
    claim transactions its loop made."""

    def __init__(self, read_counts: Callable[[], tuple[int, int, int]]) -> None:
        self._read_counts = read_counts

    def collect(self) -> Iterator[Any]:
        handed, claimed, claims = self._read_counts()
        sends = CounterMetricFamily("gongji_outbox_sends", "Outbox send attempts by this process, by how the "
                                    "outbox loop got the message", labels=["path"])
        sends.add_metric(["handed_off"], handed)
        sends.add_metric(["claimed"], claimed)
        yield sends
        yield CounterMetricFamily("gongji_outbox_claims", "Claim transactions this process's outbox loop made",
                                  value=claims)
