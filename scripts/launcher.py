"""The stack as processes: stub provinces and the gateway on loopback, each awaited until it serves, stopped."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.security.tls import GATEWAY_DNS, province_dns
from scripts.devtls import DevCa, channel_as, ensure_dev_pki

ROOT = Path(__file__).resolve().parents[1]
XINJIANG, GANSU = "650000", "620000"
PROVINCE_NAMES = {XINJIANG: "新疆", GANSU: "甘肃"}
READY_TIMEOUT_S = 45.0
STUB_READY = re.compile(r"stub province \d+ serving on (\S+)")
GATEWAY_READY = re.compile(r"gateway ready: provinces (\S+), operators (\S+)")

# Every child starts through this: it asks the kernel to kill it should its parent die without cleaning up
# (PR_SET_PDEATHSIG survives exec), then becomes the real command. Not a preexec_fn: the parent may fork
# while gRPC's threads run, and running Python in such a child between fork and exec is unsafe.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)

# Reconnect soon after a restart: gRPC's default first backoff is a second and grows to two minutes.
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000),
                   # Snapshots of a few thousand transfers pass gRPC's default 4 MiB limit.
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]


class LaunchError(RuntimeError):
    """A process did not start, died, or did not get ready in time."""


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (held open together, so none is picked twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """Poll `condition()` until truthy; fail after `timeout_s` (every wait here is bounded)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise LaunchError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


class Proc:
    """One child process, restartable under the same command line; its output appended to one log file.

    The environment is this process's without its GONGJI_* settings, then `env`; with `keep_env`, this
    process's whole environment, then `env` (`make run` passes the user's settings on).
    """

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path,
                 keep_env: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.keep_env = keep_env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.starts = 0

    def start(self) -> None:
        if self.alive:
            raise LaunchError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        child_env = {k: v for k, v in os.environ.items() if self.keep_env or not k.startswith("GONGJI_")}
        child_env.update(self.env)
        child_env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            if self.starts:  # a restart: where it begins, for whoever reads the log
                log.write(f"----- start {self.starts + 1} -----\n".encode())
                log.flush()
            self.popen = subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, *self.argv], cwd=ROOT,
                                          env=child_env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no handler runs, no finally, no final checkpoint: as a power cut would leave it."""
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait for the exit code (a graceful stop)."""
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise LaunchError(f"{self.name} did not stop within {timeout_s:.0f}s of SIGTERM:\n{self.tail()}") from None

    def output(self, since_start: bool = True) -> str:
        try:
            with self.log_path.open("rb") as log:
                if since_start:
                    log.seek(self._log_offset)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return "\n".join(f"    {self.name}| {line}" for line in self.output(False).splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive:
            code = self.popen.returncode if self.popen is not None else None
            raise LaunchError(f"{self.name} exited with code {code}:\n{self.tail()}")

    def wait_line(self, pattern: re.Pattern[str], timeout_s: float = READY_TIMEOUT_S) -> re.Match[str]:
        """Until this run of the process printed a line matching `pattern`."""
        deadline = time.monotonic() + timeout_s
        while True:
            match = pattern.search(self.output())
            if match:
                return match
            self.check_alive()
            if time.monotonic() > deadline:
                raise LaunchError(f"{self.name} did not print {pattern.pattern!r} within {timeout_s:.0f}s:\n"
                                  f"{self.tail()}")
            time.sleep(0.05)


def stop_all(procs: Iterable[Proc], grace_s: float = 10.0) -> list[str]:
    """SIGTERM to every running one (a graceful stop), SIGKILL to whatever still runs after `grace_s`; the names
    of those killed."""
    running = [proc for proc in procs if proc.alive]
    for proc in running:
        assert proc.popen is not None
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    killed = []
    for proc in running:
        assert proc.popen is not None
        try:
            proc.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed.append(proc.name)
            with contextlib.suppress(ProcessLookupError):
                proc.popen.kill()
            proc.popen.wait(5)
    return killed


def health_status(channel: grpc.Channel, timeout_s: float = 1.0) -> str:
    """SERVING, NOT_SERVING, ... or the gRPC code name when the server does not answer."""
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.RpcError as error:
        return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def wait_serving(address: str, proc: Proc | None = None, timeout_s: float = READY_TIMEOUT_S,
                 channel: grpc.Channel | None = None) -> None:
    """Until grpc.health.v1 on `address` answers SERVING (on `channel` if given, else a plaintext one)."""
    own = channel is None
    channel = channel or grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc is not None:
                proc.check_alive()
            if health_status(channel) == "SERVING":
                return
            if time.monotonic() > deadline:
                raise LaunchError(f"{address} not SERVING within {timeout_s:.0f}s"
                                  + (f":\n{proc.tail()}" if proc is not None else ""))
            time.sleep(0.05)
    finally:
        if own:
            channel.close()


@dataclass
class Stack:
    """Two stub provinces and one or more gateways on one database, every port on 127.0.0.1.

    Files under `workdir`: keys/ (the stubs' and the gateway's), logs/<process>.log, manifest.toml. With
    `tls_dir`, mutual TLS from the development CA there (created when missing); else plaintext.
    """

    workdir: Path
    db_url: str
    gateway_addresses: list[str]
    ops_addresses: list[str]
    stub_addresses: dict[str, str]
    # Each stub's control service, on a loopback port of its own (the same again after a restart).
    stub_controls: dict[str, str]
    tls_dir: Path | None = None
    keep_env: bool = False  # see Proc
    keys_dir: Path = field(init=False)
    log_dir: Path = field(init=False)
    manifest: Path = field(init=False)
    stubs: dict[str, Proc] = field(default_factory=dict)
    gateways: list[Proc] = field(default_factory=list)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)
    _ca: DevCa | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.keys_dir = self.workdir / "keys"
        self.log_dir = self.workdir / "logs"
        self.manifest = self.workdir / "manifest.toml"

    @classmethod
    def allocate(cls, workdir: Path, db_url: str, gateways: int = 1) -> Self:
        """A stack on free ports (plaintext)."""
        ports = free_ports(2 * gateways + 4)
        return cls(workdir, db_url,
                   gateway_addresses=[f"127.0.0.1:{p}" for p in ports[0:2 * gateways:2]],
                   ops_addresses=[f"127.0.0.1:{p}" for p in ports[1:2 * gateways:2]],
                   stub_addresses={XINJIANG: f"127.0.0.1:{ports[-4]}", GANSU: f"127.0.0.1:{ports[-3]}"},
                   stub_controls={XINJIANG: f"127.0.0.1:{ports[-2]}", GANSU: f"127.0.0.1:{ports[-1]}"})

    @property
    def gateway(self) -> Proc:
        return self.gateways[0]

    @property
    def processes(self) -> list[Proc]:
        return [*self.gateways, *self.stubs.values()]

    # -- stubs -------------------------------------------------------------------------------------
    def add_stub(self, code: str, gateway_address: str, *extra: str) -> Proc:
        tls = ["--tls-dir", str(self.tls_dir)] if self.tls_dir is not None else []
        proc = Proc(f"stub-{code}", ["-m", "province_stub", "--province", code, "--name", PROVINCE_NAMES[code],
                                     "--listen", self.stub_addresses[code],
                                     "--control-listen", self.stub_controls[code], "--gateway", gateway_address,
                                     "--keys-dir", str(self.keys_dir), *tls, *extra], {}, self.log_dir, self.keep_env)
        self.stubs[code] = proc
        return proc

    def start_stub(self, code: str) -> None:
        """(Re)start a stub on its port with its keys; wait until it serves."""
        proc = self.stubs[code]
        proc.start()
        proc.wait_line(STUB_READY)
        wait_until(lambda: (self.keys_dir / f"{code}-k1.pub").exists(), READY_TIMEOUT_S, f"{code}'s public key")
        wait_serving(self.stub_addresses[code], proc, channel=self.channel(self.stub_addresses[code]))

    # -- the gateway -------------------------------------------------------------------------------
    def write_manifest(self, endpoints: Mapping[str, str] | None = None,
                       policies: Mapping[str, list[str]] | None = None, header: str = "") -> None:
        """The stubs (or the given endpoints, e.g. a proxy), each with its policy lines if any."""
        endpoints = endpoints or self.stub_addresses
        policies = policies or {}
        blocks = [header] if header else []
        for code in self.stub_addresses:
            policy = policies.get(code, [])
            blocks.append("\n".join([
                "[[provinces]]", f'code = "{code}"', f'name = "{PROVINCE_NAMES[code]}"',
                f'endpoint = "{endpoints[code]}"',
                *(["[provinces.policy]", *policy] if policy else []),
                # Key files are read relative to the manifest's folder (gateway/manifest.py).
                "[[provinces.keys]]", f'key_id = "{code}-k1"', f'public_key_file = "keys/{code}-k1.pub"', ""]))
        self.manifest.write_text("\n".join(blocks), encoding="utf-8")

    def gateway_settings(self, index: int) -> dict[str, str]:
        """What gateway `index` is told: its ports, the database, the manifest, its key files, TLS or plaintext."""
        settings = {
            "GONGJI_LISTEN": self.gateway_addresses[index],
            "GONGJI_OPS_LISTEN": self.ops_addresses[index],
            "GONGJI_DATABASE_URL": self.db_url,
            "GONGJI_MANIFEST": str(self.manifest),
            "GONGJI_GATEWAY_KEY_FILE": str(self.keys_dir / "gateway.key"),
            "GONGJI_ID_HASH_KEY_FILE": str(self.keys_dir / "id-hash.key"),
            "GONGJI_DATA_KEY_FILE": str(self.keys_dir / "data.keys"),
            "GONGJI_INSECURE_DEV_PLAINTEXT": "true" if self.tls_dir is None else "false",
        }
        if self.tls_dir is not None:
            files = self._pki().files("gateway")
            settings |= {"GONGJI_TLS_CERT_FILE": str(files.cert), "GONGJI_TLS_KEY_FILE": str(files.key),
                         "GONGJI_TLS_CA_FILE": str(files.ca)}
        return settings

    def _pki(self) -> DevCa:
        """The development CA with certificates for the gateway, the stubs and an operator (made on first start)."""
        assert self.tls_dir is not None
        if self._ca is None:
            self._ca = ensure_dev_pki(self.tls_dir, list(self.stub_addresses))
        return self._ca

    def add_gateway(self, index: int, **env: str) -> Proc:
        """Gateway `index`, told `gateway_settings(index)` and then `env`."""
        name = f"gateway-{'ab'[index]}" if len(self.gateway_addresses) > 1 else "gateway"
        proc = Proc(name, ["-m", "gateway"], {**self.gateway_settings(index), **env}, self.log_dir, self.keep_env)
        if index < len(self.gateways):
            self.gateways[index] = proc
        else:
            assert index == len(self.gateways), "gateways are added in order"
            self.gateways.append(proc)
        return proc

    def start_gateway(self, index: int = 0) -> float:
        """(Re)start a gateway on its ports and database; wait until health says SERVING. Seconds taken."""
        started = time.monotonic()
        self.gateways[index].start()
        self.await_gateway(index)
        return time.monotonic() - started

    def await_gateway(self, index: int) -> None:
        proc = self.gateways[index]
        proc.wait_line(GATEWAY_READY)
        wait_serving(self.gateway_addresses[index], proc, channel=self.channel(self.gateway_addresses[index]))

    def start(self, *, gateway_env: Mapping[str, str] | None = None, stub_gateway: Mapping[str, int] | None = None,
              endpoints: Mapping[str, str] | None = None, policies: Mapping[str, list[str]] | None = None,
              header: str = "") -> None:
        """Stubs first (they write their keys), the manifest naming them, then the gateway(s), each awaited.

        `stub_gateway` says which gateway each stub calls back (default the first); `endpoints` where the gateway
        reaches each province (default the stubs themselves). The caller has arranged for close() to run
        whatever happens, so a failed start leaves nothing running.
        """
        if self.tls_dir is not None:
            self._pki()
        for code in self.stub_addresses:
            if code not in self.stubs:
                self.add_stub(code, self.gateway_addresses[(stub_gateway or {}).get(code, 0)])
            self.start_stub(code)
        self.write_manifest(endpoints, policies, header)
        for index in range(len(self.gateway_addresses)):
            self.add_gateway(index, **(gateway_env or {}))
        # Several gateways start at once, as a deployment would start them: they migrate the empty database
        # and apply the manifest concurrently.
        for proc in self.gateways:
            proc.start()
        for index in range(len(self.gateways)):
            self.await_gateway(index)

    # -- channels and the end ----------------------------------------------------------------------
    def channel(self, address: str) -> grpc.Channel:
        """A channel to one of the stack's ports, kept for reuse; as the operator with mutual TLS."""
        channel = self._channels.get(address)
        if channel is None:
            stub = next((code for code in self.stub_addresses
                         if address in (self.stub_addresses[code], self.stub_controls[code])), None)
            server_name = province_dns(stub) if stub is not None else GATEWAY_DNS
            channel = self._channels[address] = channel_as(address, server_name, self.tls_dir,
                                                           options=CHANNEL_OPTIONS)
        return channel

    def close_channels(self) -> None:
        """The stack's channels closed, its processes left running (the bench goes on with asyncio channels)."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def close(self, grace_s: float = 10.0) -> list[str]:
        """Every channel closed, every process stopped, whatever happened; the names of those that had to be
        killed."""
        self.close_channels()
        return stop_all(self.processes, grace_s)

    def tails(self) -> str:
        return "\n".join(proc.tail() for proc in self.processes)
