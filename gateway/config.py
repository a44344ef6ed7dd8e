"""Settings: read and validated once at start-up, the only reader of the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from gateway.addresses import DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN, DEFAULT_OPS_LISTEN
from gateway.domain.settlement import SettlementPeriod, SettlementPolicy
from gateway.outbox_loop import OutboxSettings
from gateway.security.tls import TlsFiles
from gateway.store.engine import SQLITE_SYNCHRONOUS
from gateway.usecases.outbox_ports import Backoff


class ConfigError(ValueError):
    """A setting is missing or malformed; the gateway refuses to start."""


def _period(raw: str) -> SettlementPeriod:
    try:
        return SettlementPeriod(raw.lower())
    except ValueError:
        raise ConfigError(f"GONGJI_SETTLEMENT_PERIOD must be daily or monthly, got {raw!r}") from None


def check_database_url(url: str) -> None:
    """The gateway runs on SQLite and PostgreSQL only (`gongji db` checks its --database the same way)."""
    if not url.startswith(("sqlite", "postgresql")):
        raise ConfigError("database_url must be a sqlite:/// or postgresql:// URL")


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    ops_listen: str = DEFAULT_OPS_LISTEN
    # The HTTP port: Prometheus /metrics and the operators' dashboard (/); empty: none.
    metrics_listen: str = DEFAULT_METRICS_LISTEN
    # The dashboard lists transfers not final this long after they arrived as stuck.
    dashboard_stuck_seconds: float = 300.0
    # The HTTP port answers on this many threads, holds at most this many connections, and closes one
    # that has not sent its request within the timeout (docs/security.md, "Hostile input and limits").
    http_workers: int = 4
    http_max_connections: int = 64
    http_timeout_seconds: float = 5.0
    database_url: str = "sqlite:///var/gongji.db"
    # An empty database, or one at an older revision, is migrated to head at start-up; when false the
    # gateway refuses it until `gongji db upgrade` has run. A schema it does not know is always refused.
    auto_migrate: bool = True
    # SQLite only: FULL syncs the write-ahead log at every commit, so an answered (receipted) request survives
    # a power loss or an OS crash; NORMAL survives a killed process but may lose the last commits then.
    sqlite_synchronous: str = "FULL"
    manifest: Path | None = None
    # Secrets are file paths, never values (created on first start when missing, for development).
    gateway_key_file: Path = Path("var/keys/gateway.key")
    gateway_key_id: str = "gateway-k1"
    # Mutual TLS on both ports and on calls to provinces (PEM files); see docs/security.md.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    # Development only: plaintext ports with no caller certificates (logged as a warning at start).
    insecure_dev_plaintext: bool = False
    # After a new gateway key is introduced, signatures by the previous one stay good this long.
    gateway_key_overlap_seconds: float = 7 * 86400.0
    id_hash_key_file: Path = Path("var/keys/id-hash.key")
    # AES-256-GCM keys for personal data at rest, `key_id hex-key` per line, the first one current.
    data_key_file: Path = Path("var/keys/data.keys")
    max_clock_skew_seconds: float = 120.0
    province_call_timeout_seconds: float = 5.0
    db_threads: int = 0
    # A call waits at most this long for a lock another connection holds on the database (SQLite's write lock, a
    # PostgreSQL table or row lock), then is refused UNAVAILABLE / DATABASE_BUSY with nothing done.
    database_busy_seconds: float = 5.0
    # A stop (SIGTERM) waits this long at most for the calls executing to finish with their answers: longer than
    # any call runs with the default bounds (two database steps of database_busy_seconds around the provinces'
    # answers, province_call_timeout_seconds).
    stop_grace_seconds: float = 20.0
    # The largest request or answer gRPC carries on either port; larger ones end RESOURCE_EXHAUSTED.
    max_message_bytes: int = 256 * 1024
    # Connections each gRPC port holds at once (one being set up counts); more are closed on arrival.
    grpc_max_connections: int = 256
    # Calls a second each province may make on the provinces' port, and the burst it may save up; 0: no limit.
    rate_limit_per_second: float = 200.0
    rate_limit_burst: float = 400.0
    # VerifyRelation's own budget on top (queries a second, and the burst): it tells a province about people
    # insured elsewhere, so it is kept well below the general one; 0: no limit.
    relation_query_rate_per_second: float = 5.0
    relation_query_burst: float = 20.0
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    # `python -m gateway` runs the outbox in this many separate dispatcher processes, or in the server
    # process when 0 (the default: in `make bench` on 2 cores both give the same throughput, and in
    # process the outbox is woken at once rather than polled, so lifecycles finish sooner).
    outbox_dispatchers: int = 0
    dispatcher_poll_seconds: float = 0.05
    log_level: str = "INFO"
    log_json: bool = False
    settlement: SettlementPolicy = field(default_factory=SettlementPolicy)
    # A development stack (make run, the tests): its key files may sit beside its database.
    development: bool = False

    @property
    def tls_files(self) -> TlsFiles | None:
        if self.tls_cert_file is None or self.tls_key_file is None or self.tls_ca_file is None:
            return None
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file)

    @property
    def gateway_public_key_file(self) -> Path:
        return self.gateway_key_file.with_suffix(".pub")

    @property
    def key_files(self) -> tuple[Path, ...]:
        return (self.gateway_key_file, self.id_hash_key_file, self.data_key_file)

    def keys_beside_database(self) -> list[Path]:
        """Key files inside the SQLite database's folder: whoever copies that folder, or backs it up, has both
        the data and the keys (with the ID-hash key, a keyed hash gives an ID number back by enumerating birth
        dates and sequence numbers). Empty for PostgreSQL, whose files the gateway does not know."""
        if not self.database_url.startswith("sqlite:///"):
            return []
        folder = Path(self.database_url.removeprefix("sqlite:///")).resolve().parent
        return [key for key in self.key_files if key.resolve().is_relative_to(folder)]

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        def get(name: str, default: str) -> str:
            return env.get(f"GONGJI_{name}", default)

        def number(name: str, default: float) -> float:
            raw = get(name, str(default))
            try:
                return float(raw)
            except ValueError:
                raise ConfigError(f"GONGJI_{name} must be a number, got {raw!r}") from None

        def path(name: str) -> Path | None:
            raw = get(name, "")
            return Path(raw) if raw else None

        database_url = get("DATABASE_URL", cls.database_url)
        sqlite = database_url.startswith("sqlite")
        manifest = get("MANIFEST", "")
        settings = cls(
            listen=get("LISTEN", cls.listen),
            ops_listen=get("OPS_LISTEN", cls.ops_listen),
            metrics_listen=get("METRICS_LISTEN", cls.metrics_listen),
            dashboard_stuck_seconds=number("DASHBOARD_STUCK_SECONDS", cls.dashboard_stuck_seconds),
            http_workers=int(number("HTTP_WORKERS", cls.http_workers)),
            http_max_connections=int(number("HTTP_MAX_CONNECTIONS", cls.http_max_connections)),
            http_timeout_seconds=number("HTTP_TIMEOUT_SECONDS", cls.http_timeout_seconds),
            database_url=database_url,
            auto_migrate=get("AUTO_MIGRATE", "true").lower() in ("1", "true", "yes"),
            sqlite_synchronous=get("SQLITE_SYNCHRONOUS", cls.sqlite_synchronous).upper(),
            manifest=Path(manifest) if manifest else None,
            gateway_key_file=Path(get("GATEWAY_KEY_FILE", str(cls.gateway_key_file))),
            gateway_key_id=get("GATEWAY_KEY_ID", cls.gateway_key_id),
            tls_cert_file=path("TLS_CERT_FILE"),
            tls_key_file=path("TLS_KEY_FILE"),
            tls_ca_file=path("TLS_CA_FILE"),
            insecure_dev_plaintext=get("INSECURE_DEV_PLAINTEXT", "false").lower() in ("1", "true", "yes"),
            gateway_key_overlap_seconds=number("GATEWAY_KEY_OVERLAP_SECONDS", cls.gateway_key_overlap_seconds),
            id_hash_key_file=Path(get("ID_HASH_KEY_FILE", str(cls.id_hash_key_file))),
            data_key_file=Path(get("DATA_KEY_FILE", str(cls.data_key_file))),
            max_clock_skew_seconds=number("MAX_CLOCK_SKEW_SECONDS", cls.max_clock_skew_seconds),
            province_call_timeout_seconds=number("PROVINCE_CALL_TIMEOUT_SECONDS", cls.province_call_timeout_seconds),
            # SQLite (one writer, microsecond statements): 0 = on the event loop. PostgreSQL: a pool of
            # threads, since its round trips would otherwise stall every call in flight.
            db_threads=int(number("DB_THREADS", 0 if sqlite else 8)),
            database_busy_seconds=number("DATABASE_BUSY_SECONDS", cls.database_busy_seconds),
            stop_grace_seconds=number("STOP_GRACE_SECONDS", cls.stop_grace_seconds),
            max_message_bytes=int(number("MAX_MESSAGE_BYTES", cls.max_message_bytes)),
            grpc_max_connections=int(number("GRPC_MAX_CONNECTIONS", cls.grpc_max_connections)),
            rate_limit_per_second=number("RATE_LIMIT_PER_SECOND", cls.rate_limit_per_second),
            rate_limit_burst=number("RATE_LIMIT_BURST", cls.rate_limit_burst),
            relation_query_rate_per_second=number("RELATION_QUERY_RATE_PER_SECOND",
                                                  cls.relation_query_rate_per_second),
            relation_query_burst=number("RELATION_QUERY_BURST", cls.relation_query_burst),
            outbox=OutboxSettings(
                backoff=Backoff(base_seconds=number("OUTBOX_BACKOFF_BASE_SECONDS", 0.2),
                                max_seconds=number("OUTBOX_BACKOFF_MAX_SECONDS", 30.0)),
                checkpoint_interval_seconds=number("AUDIT_CHECKPOINT_SECONDS", 60.0),
                lease_seconds=number("OUTBOX_LEASE_SECONDS", OutboxSettings.lease_seconds)),
            outbox_dispatchers=int(number("OUTBOX_DISPATCHERS", 0)),
            dispatcher_poll_seconds=number("DISPATCHER_POLL_SECONDS", 0.05),
            log_level=get("LOG_LEVEL", "INFO").upper(),
            log_json=get("LOG_JSON", "false").lower() in ("1", "true", "yes"),
            development=get("DEVELOPMENT", "false").lower() in ("1", "true", "yes"),
            settlement=SettlementPolicy(
                period=_period(get("SETTLEMENT_PERIOD", SettlementPeriod.DAILY.value)),
                close_delay=timedelta(seconds=number("SETTLEMENT_CLOSE_DELAY_SECONDS", 600)),
                close_on_schedule=get("SETTLEMENT_CLOSE_ON_SCHEDULE", "true").lower() in ("1", "true", "yes")),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("listen", "ops_listen", "metrics_listen"):
            if name == "metrics_listen" and not self.metrics_listen:
                continue
            host, sep, port = getattr(self, name).rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"{name} must be host:port, got {getattr(self, name)!r}")
        if self.dashboard_stuck_seconds < 0:
            raise ConfigError("dashboard_stuck_seconds must not be negative")
        if not 1 <= self.http_workers <= 64 or not 1 <= self.http_max_connections <= 4096 \
                or not 0 < self.http_timeout_seconds <= 300:
            raise ConfigError("http_workers must be within 1..64, http_max_connections within 1..4096 and "
                              "http_timeout_seconds within 0..300 (above 0)")
        tls = (self.tls_cert_file, self.tls_key_file, self.tls_ca_file)
        if self.insecure_dev_plaintext and any(tls):
            raise ConfigError("GONGJI_INSECURE_DEV_PLAINTEXT and GONGJI_TLS_* exclude each other")
        if not self.insecure_dev_plaintext and not all(tls):
            raise ConfigError("mutual TLS needs GONGJI_TLS_CERT_FILE, GONGJI_TLS_KEY_FILE and GONGJI_TLS_CA_FILE "
                              "(for development only: GONGJI_INSECURE_DEV_PLAINTEXT=true)")
        for file in (f for f in tls if f is not None):
            if not file.is_file():
                raise ConfigError(f"TLS file {file} does not exist")
        check_database_url(self.database_url)
        if self.manifest is not None and not self.manifest.is_file():
            raise ConfigError(f"manifest {self.manifest} does not exist")
        if self.sqlite_synchronous not in SQLITE_SYNCHRONOUS:
            raise ConfigError(f"GONGJI_SQLITE_SYNCHRONOUS must be FULL or NORMAL, got {self.sqlite_synchronous!r}")
        if not 0 <= self.outbox_dispatchers <= 16 or self.dispatcher_poll_seconds <= 0:
            raise ConfigError("outbox_dispatchers must be within 0..16 and dispatcher_poll_seconds positive")
        if self.settlement.close_delay < timedelta(0):
            raise ConfigError("settlement close delay must not be negative")
        if not 16 * 1024 <= self.max_message_bytes <= 64 * 1024 * 1024:
            raise ConfigError("max_message_bytes must be within 16 KiB..64 MiB")
        if not 1 <= self.grpc_max_connections <= 65536:
            raise ConfigError("grpc_max_connections must be within 1..65536")
        if self.rate_limit_per_second < 0 or (self.rate_limit_per_second > 0 and self.rate_limit_burst < 1):
            raise ConfigError("rate_limit_per_second must not be negative, and rate_limit_burst is at least 1")
        if self.relation_query_rate_per_second < 0 or (
                self.relation_query_rate_per_second > 0 and self.relation_query_burst < 1):
            raise ConfigError("relation_query_rate_per_second must not be negative, and relation_query_burst is at "
                              "least 1")
        if not 0.1 <= self.database_busy_seconds <= 120 or not 1 <= self.stop_grace_seconds <= 600:
            raise ConfigError("database_busy_seconds must be within 0.1..120 and stop_grace_seconds within 1..600")
        if self.db_threads < 0 or self.max_clock_skew_seconds <= 0 or self.province_call_timeout_seconds <= 0:
            raise ConfigError("db_threads, max_clock_skew_seconds and province_call_timeout_seconds must be positive")
        # A lease shorter than a batch's calls could let another gateway send a message still in flight.
        if self.outbox.lease_seconds < 2 * self.province_call_timeout_seconds:
            raise ConfigError("outbox lease_seconds must be at least twice province_call_timeout_seconds")
