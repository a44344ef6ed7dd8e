"""Composition root (with gateway/core.py): where concrete classes meet. Tests call create_gateway on port 0."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from gateway.api.gate import CallGate
from gateway.api.interceptor import ErrorMappingInterceptor
from gateway.api.metrics import OutboxSendCollector, RpcMetrics, StateCollector
from gateway.api.quota_servicer import QuotasServicer
from gateway.api.servicers import (
    GatewayKeysServicer,
    OperationsServicer,
    RelationsServicer,
    SettlementsServicer,
    TransfersServicer,
)
from gateway.api.transport import authorize_operator, server_credentials
from gateway.api.web import HttpLimits, MetricsServer
from gateway.config import Settings
from gateway.core import Core, build_core
from gateway.domain.clock import Clock, SystemClock
from gateway.manifest import load_manifest
from gateway.outbox_loop import OutboxWorker
from gateway.usecases.audit import checkpoint_audit
from gateway.usecases.context import UseCaseContext
from gateway.usecases.dashboard import dashboard_snapshot
from gateway.usecases.keys import register_gateway_key
from gateway.usecases.monitoring import get_stats
from gateway.usecases.provinces import apply_manifest
from gateway.usecases.runner import UseCaseRunner
from protos.gongji.v1 import (
    keys_pb2,
    keys_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    quotas_pb2,
    quotas_pb2_grpc,
    relations_pb2,
    relations_pb2_grpc,
    settlements_pb2,
    settlements_pb2_grpc,
    transfers_pb2,
    transfers_pb2_grpc,
)

log = logging.getLogger(__name__)

# grpc-stubs describe only the synchronous health servicer; this is its asyncio twin.
HealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

PROVINCE_SERVICES = (
    transfers_pb2.DESCRIPTOR.services_by_name["Transfers"].full_name,
    relations_pb2.DESCRIPTOR.services_by_name["Relations"].full_name,
    settlements_pb2.DESCRIPTOR.services_by_name["Settlements"].full_name,
    keys_pb2.DESCRIPTOR.services_by_name["GatewayKeys"].full_name,
    quotas_pb2.DESCRIPTOR.services_by_name["Quotas"].full_name,
)
OPERATOR_SERVICES = (operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name,)

# A connection to a gRPC port must finish TLS and send its HTTP/2 settings within this time.
HANDSHAKE_TIMEOUT_MS = 10_000
# Calls in flight on one connection (HTTP/2's recommended minimum); a client queues any beyond.
MAX_STREAMS_PER_CONNECTION = 100
# Once the calls executing at a stop have finished, what is left (held calls, health watches) is answered at
# once: the servers' stop waits this long for it before cancelling.
STRAGGLERS_SECONDS = 1.0


@dataclass
class Gateway:
    """A running gateway: the provinces' server, the operators' server and the outbox loop."""

    port: int
    ops_port: int
    context: UseCaseContext
    _server: grpc.aio.Server
    _ops_server: grpc.aio.Server
    _healths: tuple[Any, ...]
    _outbox: OutboxWorker
    _core: Core
    _metrics: MetricsServer | None = None
    _gates: tuple[CallGate, ...] = ()

    @property
    def engine(self) -> Engine:
        return self._core.engine

    @property
    def sweeps_done(self) -> int:
        """Deadline sweeps the outbox loop has completed (D13 returns, rejections, scheduled closes)."""
        return self._outbox.sweeps_done

    @property
    def outbox_sent(self) -> tuple[int, int]:
        """Messages the outbox loop has sent (attempts): (handed over at their commit, found by a claim)."""
        return self._outbox.sent

    @property
    def outbox_claims(self) -> int:
        """Claim transactions the outbox loop has made."""
        return self._outbox.claims

    @property
    def metrics_port(self) -> int | None:
        return self._metrics.port if self._metrics else None

    async def stop(self, grace: float = 20.0, *, exiting: bool = False) -> None:
        """Graceful stop: health NOT_SERVING first; the calls executing finish with their answer (waited for up to
        `grace`), calls not yet executing and new ones are answered UNAVAILABLE / SHUTTING_DOWN, open streams end
        so (see CallGate). Then the servers stop, the outbox stops (its sends in flight finish), the audit gets its
        last checkpoint and the database is closed.

        With `exiting` the servers are left running, refusing new calls: gRPC's own stop cancels (CANCELLED) any
        call reaching the server in the instant it stops, before its client has read the GOAWAY. The process calls
        hold_calls next and exits at once (os._exit): the kernel closing the connections fails what was held or on
        its way UNAVAILABLE, and none of it was executed.
        """
        for servicer in self._healths:
            await servicer.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(gate.drain(grace, hold=not exiting) for gate in self._gates))
        log.info("stopping: calls drained in %.3f s (still inside: %s)",
                 loop.time() - started, [gate.active for gate in self._gates])
        if not exiting:
            # Only the held calls and the health watches are left, answered at the release: the servers' own grace
            # cuts (CANCELLED) nothing else but a call still executing past `grace` or a stream its client stopped
            # reading.
            stopping = asyncio.gather(self._server.stop(STRAGGLERS_SECONDS),
                                      self._ops_server.stop(STRAGGLERS_SECONDS))
            await asyncio.sleep(0.05)  # the servers have begun to stop: clients are being told to go away
            for gate in self._gates:
                gate.release()
            await stopping
        await self._outbox.stop()  # its sends in flight finish, each within its call's deadline
        # The last state changes get a signed checkpoint before the process goes.
        try:
            await self._core.run_in_db(checkpoint_audit, self._core.context)
        except Exception:
            log.exception("final audit checkpoint failed")
        if self._metrics is not None:
            self._metrics.stop()
        await self._core.close()

    async def hold_calls(self) -> None:
        """Hold every new call (not answered, never executed) until the process exits: see stop(exiting=True)."""
        await asyncio.gather(*(gate.hold_for_exit() for gate in self._gates))

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


def _new_server(settings: Settings, services: tuple[str, ...], observe: Callable[[str, str, float], None],
                gate: CallGate, authorize: Callable[[str, Any], None] | None = None) -> tuple[grpc.aio.Server, Any]:
    server = grpc.aio.server(
        interceptors=[ErrorMappingInterceptor(observe, authorize, gate)],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # gRPC core's defaults would give a connection 120 s to finish TLS and send its HTTP/2
            # settings, and leave connections and streams per connection unlimited.
            ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
            ("grpc.max_allowed_incoming_connections", settings.grpc_max_connections),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        ],
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, health_servicer


def _bind(server: grpc.aio.Server, address: str, settings: Settings) -> int:
    files = settings.tls_files
    if files is not None:
        port = server.add_secure_port(address, server_credentials(files))
    elif settings.insecure_dev_plaintext:
        log.warning("PLAINTEXT port %s: no TLS, no caller certificates — for development only "
                    "(GONGJI_INSECURE_DEV_PLAINTEXT)", address)
        port = server.add_insecure_port(address)
    else:
        raise ValueError("mutual TLS files are required (or insecure_dev_plaintext for development)")
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


def _warn_of_keys_beside_database(settings: Settings) -> None:
    """Production keeps its keys away from the data and its backups (docs/security.md, "Where the keys live")."""
    beside = settings.keys_beside_database()
    if beside and not settings.development:
        log.warning("key files %s are inside the database's folder: whoever has a copy of that folder or its "
                    "backups has the data and its keys; keep them elsewhere in production",
                    ", ".join(str(path) for path in beside))


async def _tell_health(healths: tuple[tuple[Any, tuple[str, ...]], ...], writable: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if writable else health_pb2.HealthCheckResponse.NOT_SERVING
    for health_servicer, services in healths:
        for name in ("", *services):
            await health_servicer.set(name, status)


async def create_gateway(settings: Settings, clock: Clock | None = None, run_outbox: bool = True) -> Gateway:
    """Build and start everything `settings` describes; ports 0 pick free ports (see .port/.ops_port).

    With run_outbox=False the outbox is left to separate dispatcher processes (create_dispatcher).
    """
    core = build_core(settings, clock or SystemClock())
    _warn_of_keys_beside_database(settings)  # once the database opened: a refusal to start stays one line
    context, run_in_db = core.context, core.run_in_db
    # The key this process signs with is the current one; older ones retire after the overlap.
    register_gateway_key(context, settings.gateway_key_id, core.public_key,
                         timedelta(seconds=settings.gateway_key_overlap_seconds))
    if settings.manifest is not None:
        result = apply_manifest(context, load_manifest(settings.manifest))
        log.info("manifest %s applied: created %s, updated %s", settings.manifest, result.created, result.updated)
    core.run_inline_from_here()  # the start's own writes above could wait for a lock; calls do not
    outbox = OutboxWorker(context, core.client, run_in_db, settings.outbox)
    core.store.claimable_committed = outbox.wake
    runner = UseCaseRunner(context, core.run_call)

    registry = CollectorRegistry()
    rpc_metrics = RpcMetrics(registry)
    registry.register(StateCollector(functools.partial(get_stats, context)))
    registry.register(OutboxSendCollector(lambda: (*outbox.sent, outbox.claims)))
    gates = (CallGate(), CallGate())
    server, server_health = _new_server(settings, PROVINCE_SERVICES, rpc_metrics.observe, gates[0])
    transfers_pb2_grpc.add_TransfersServicer_to_server(TransfersServicer(runner), server)
    relations_pb2_grpc.add_RelationsServicer_to_server(RelationsServicer(runner), server)
    settlements_pb2_grpc.add_SettlementsServicer_to_server(SettlementsServicer(runner), server)
    keys_pb2_grpc.add_GatewayKeysServicer_to_server(GatewayKeysServicer(runner), server)
    quotas_pb2_grpc.add_QuotasServicer_to_server(QuotasServicer(runner), server)
    ops_server, ops_health = _new_server(settings, OPERATOR_SERVICES, rpc_metrics.observe, gates[1],
                                         authorize_operator)
    operations_pb2_grpc.add_OperationsServicer_to_server(
        OperationsServicer(UseCaseRunner(context, core.run_for_operators)), ops_server)

    port = _bind(server, settings.listen, settings)
    ops_port = _bind(ops_server, settings.ops_listen, settings)
    await server.start()
    await ops_server.start()
    if run_outbox:
        outbox.start()
    healths = ((server_health, PROVINCE_SERVICES), (ops_health, OPERATOR_SERVICES))
    await _tell_health(healths, writable=True)
    # While the database cannot be written, every service says NOT_SERVING (a stopping server's health ignores it).
    core.watch.start(functools.partial(_tell_health, healths))
    read_snapshot = functools.partial(dashboard_snapshot, context, timedelta(seconds=settings.dashboard_stuck_seconds))
    limits = HttpLimits(settings.http_workers, settings.http_max_connections, settings.http_timeout_seconds)
    metrics = MetricsServer(registry, settings.metrics_listen, read_snapshot, limits) if settings.metrics_listen \
        else None
    return Gateway(port, ops_port, context, server, ops_server, (server_health, ops_health), outbox, core, metrics,
                   gates)


@dataclass
class Dispatcher:
    """A running outbox dispatcher: delivers what any gateway process of this database enqueued."""

    _outbox: OutboxWorker
    _core: Core

    async def stop(self) -> None:
        await self._outbox.stop()
        await self._core.close()


async def create_dispatcher(settings: Settings, clock: Clock | None = None) -> Dispatcher:
    """The outbox alone, in its own process: claims are leased in the database, so several may run."""
    core = build_core(settings, clock or SystemClock())
    core.run_inline_from_here()
    # Nothing in this process can wake it when a message is enqueued: poll often, it costs one query.
    polling = dataclasses.replace(settings.outbox, poll_interval_seconds=settings.dispatcher_poll_seconds,
                                  poll_fast_after_work=True)
    outbox = OutboxWorker(core.context, core.client, core.run_in_db, polling)
    core.store.claimable_committed = outbox.wake  # what its own sweeps queue
    outbox.start()
    core.watch.start(_no_health)  # no health service here: the watch only logs a busy database
    return Dispatcher(outbox, core)


async def _no_health(_writable: bool) -> None:
    pass
