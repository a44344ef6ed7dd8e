"""Composition root of the stub province: StubConfig in, a running grpc.aio server out."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import province_pb2, province_pb2_grpc
from province_stub.callers import CallerGate, is_gateway, is_operator
from province_stub.client import DEFAULT_DEADLINE_S, GatewayClient
from province_stub.confirmer import Confirmer
from province_stub.consent import Consenter, beijing_today
from province_stub.control import StubControl
from province_stub.gateway_keys import FETCH_DEADLINE_S, MAX_AGE_S, REFETCH_INTERVAL_S, GatewayKeyDirectory
from province_stub.inbox import ProvinceInbox
from province_stub.people import default_seed_path, load_seed
from province_stub.quota_client import QuotaClient
from province_stub.quota_control import QuotaControl
from province_stub.refusals import DEFAULT_MAX_CLOCK_SKEW_S, HeaderCheck
from province_stub.settlement import Acknowledger
from province_stub.signing import PublicKeyStore, ensure_key_pair
from province_stub.state import Behaviour, ConsentRequestRecord, StubState

logger = logging.getLogger(__name__)

# grpc-stubs describe only the synchronous health servicer; this is its asyncio twin.
AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

INBOX_SERVICE = province_pb2.DESCRIPTOR.services_by_name["ProvinceInbox"].full_name
CONTROL_SERVICE = control_pb2.DESCRIPTOR.services_by_name["StubControl"].full_name


@dataclass(frozen=True)
class StubConfig:
    """Everything a stub province needs to start; read once."""

    province: str
    name: str = ""
    listen: str = "127.0.0.1:0"
    # StubControl (tests, the demo, the bench) on a port of its own, loopback only: the inbox port serves the
    # gateway alone. With TLS it also requires an operator's certificate.
    control_listen: str = "127.0.0.1:0"
    gateway: str = "127.0.0.1:50051"
    keys_dir: Path = Path("var/keys")
    # Empty: "<province>-k1".
    key_id: str = ""
    # None: the packaged province_stub/seeds/<province>.toml.
    seed: Path | None = None
    # Mutual TLS: a folder with ca.crt and province-<code>.crt/.key (as `make run`'s development CA
    # writes them); None: plaintext.
    tls_dir: Path | None = None
    behaviour: Behaviour = field(default_factory=Behaviour)
    gateway_deadline_s: float = DEFAULT_DEADLINE_S
    # The gateway's keys come from its ListGatewayKeys: asked again for an unknown key id at most this
    # often, and when the list is older than gateway_keys_max_age_s (see GatewayKeyDirectory).
    gateway_keys_refetch_s: float = REFETCH_INTERVAL_S
    gateway_keys_max_age_s: float = MAX_AGE_S
    # The date the consent age rule (D6) counts on; tests pin it, e.g. the day before a 16th birthday.
    today: Callable[[], datetime.date] = beijing_today
    # The clock a gateway message's created_at is judged by (seconds since the epoch), and how far off it may
    # be; tests running the gateway on a moved clock move this one with it.
    now: Callable[[], float] = time.time
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S

    @property
    def signing_key_id(self) -> str:
        return self.key_id or f"{self.province}-k1"

    @property
    def seed_path(self) -> Path:
        return self.seed if self.seed is not None else default_seed_path(self.province)


class RunningStub:
    """A started stub; `state` is exposed for in-process tests."""

    def __init__(
        self,
        config: StubConfig,
        server: grpc.aio.Server,
        port: int,
        control_server: grpc.aio.Server,
        control_port: int,
        state: StubState,
        health_servicer: Any,
        channel: grpc.aio.Channel,
        confirmer: Confirmer,
        consenter: Consenter,
        acknowledger: Acknowledger,
    ) -> None:
        self.config = config
        self.port = port
        self.control_port = control_port
        self.state = state
        self._server = server
        self._control_server = control_server
        self._health = health_servicer
        self._channel = channel
        self._confirmer = confirmer
        self._consenter = consenter
        self._acknowledger = acknowledger

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @property
    def control_address(self) -> str:
        host = self.config.control_listen.rsplit(":", 1)[0]
        return f"{host}:{self.control_port}"

    @property
    def key_id(self) -> str:
        return self.config.signing_key_id

    async def stop(self, grace_s: float = 1.0) -> None:
        """Health NOT_SERVING first, so launchers stop routing here, then drain and close."""
        await self._health.enter_graceful_shutdown()
        await asyncio.gather(self._control_server.stop(grace_s), self._server.stop(grace_s))
        await self._confirmer.close()
        await self._consenter.close()
        await self._acknowledger.close()
        await self._channel.close(None)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


GATEWAY_TLS_NAME = "gateway.gongji"
# Back to a restarted gateway within seconds: gRPC's default reconnect backoff grows to two minutes,
# during which every call (a confirmation being resent, say) would fail at once.
GATEWAY_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                           ("grpc.max_reconnect_backoff_ms", 5000)]


def _tls_files(config: StubConfig) -> tuple[bytes, bytes, bytes]:
    assert config.tls_dir is not None
    folder = config.tls_dir
    name = f"province-{config.province}"
    return (
        (folder / f"{name}.key").read_bytes(),
        (folder / f"{name}.crt").read_bytes(),
        (folder / "ca.crt").read_bytes(),
    )


def is_loopback(address: str) -> bool:
    """Whether a host:port names this machine only (127.0.0.0/8, ::1 or localhost)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(server: grpc.aio.Server, address: str, config: StubConfig) -> int:
    if config.tls_dir is None:
        return server.add_insecure_port(address)
    key, cert, ca = _tls_files(config)
    return server.add_secure_port(
        address, grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    )


async def start_stub(config: StubConfig) -> RunningStub:
    if not is_loopback(config.control_listen):
        raise ValueError(f"the control port listens on loopback only, not {config.control_listen}")
    seed = load_seed(config.seed_path)
    if seed.province != config.province:
        raise ValueError(f"seed {config.seed_path} is for province {seed.province}, not {config.province}")
    private_key = ensure_key_pair(Path(config.keys_dir), config.signing_key_id)
    # Other provinces' keys, where their files were given to us (checked on what the gateway passes on).
    province_keys = PublicKeyStore(Path(config.keys_dir), gateway_current_file=False)
    state = StubState(province=config.province, behaviour=config.behaviour)
    for person in seed.people.values():
        state.quota.set_balance(person.id_number, person.account_fen)

    if config.tls_dir is None:
        channel = grpc.aio.insecure_channel(config.gateway, options=GATEWAY_CHANNEL_OPTIONS)
    else:
        key, cert, ca = _tls_files(config)
        # The gateway's certificate must name it (gateway.gongji): nobody else gets our instructions.
        channel = grpc.aio.secure_channel(
            config.gateway,
            grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert),
            options=[*GATEWAY_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", GATEWAY_TLS_NAME)],
        )
    # The gateway's own keys are asked of the gateway, over the same channel.
    gateway_keys = GatewayKeyDirectory(
        channel,
        deadline_s=min(config.gateway_deadline_s, FETCH_DEADLINE_S),
        refetch_interval_s=config.gateway_keys_refetch_s,
        max_age_s=config.gateway_keys_max_age_s,
    )
    client = GatewayClient(
        channel,
        config.province,
        config.signing_key_id,
        private_key,
        gateway_keys,
        deadline_s=config.gateway_deadline_s,
    )
    confirmer = Confirmer(client)
    consenter = Consenter(client, today=config.today)
    acknowledger = Acknowledger(client)

    def on_accepted(transfer_id: str, confirm_by: float | None) -> None:
        # The behaviour in force when the answer went out decides how to confirm.
        confirmer.schedule(transfer_id, state.behaviour, confirm_by)

    def on_consent_requested(request: ConsentRequestRecord, behaviour: Behaviour) -> None:
        consenter.schedule(request, behaviour)

    # With mutual TLS the inbox obeys the gateway's certificate only, the control port an operator's; on
    # plaintext ports (development) no caller has an identity to check.
    tls = config.tls_dir is not None
    server = grpc.aio.server(interceptors=[CallerGate(
        is_gateway, "NOT_THE_GATEWAY", "only the gateway (gongji:gateway) calls a province's inbox")] if tls else [])
    header_check = HeaderCheck(config.province, config.now, config.max_clock_skew_s)
    province_pb2_grpc.add_ProvinceInboxServicer_to_server(
        ProvinceInbox(state, seed, gateway_keys, province_keys, header_check, on_accepted, on_consent_requested,
                      acknowledger.schedule),
        server,
    )
    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((INBOX_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    control_server = grpc.aio.server(interceptors=[CallerGate(
        is_operator, "NOT_AN_OPERATOR", "only an operator (gongji:operator:<name>) steers the stub")] if tls else [])
    control_pb2_grpc.add_StubControlServicer_to_server(
        StubControl(state, seed, client, confirmer, consenter, acknowledger,
                    QuotaControl(state, seed, QuotaClient(channel, client, gateway_keys,
                                                          deadline_s=config.gateway_deadline_s))),
        control_server
    )
    reflection.enable_server_reflection((CONTROL_SERVICE, reflection.SERVICE_NAME), control_server)

    port = _listen(server, config.listen, config)
    control_port = _listen(control_server, config.control_listen, config) if port else 0
    if port == 0 or control_port == 0:
        await channel.close(None)
        raise OSError(f"could not listen on {config.control_listen if port else config.listen}")
    await server.start()
    await control_server.start()
    for service in ("", INBOX_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    logger.info(
        "stub province %s %s listening on port %d (control on %d), gateway %s",
        config.province,
        config.name,
        port,
        control_port,
        config.gateway,
    )
    return RunningStub(config, server, port, control_server, control_port, state, health_servicer, channel,
                       confirmer, consenter, acknowledger)
