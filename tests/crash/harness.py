"""Crash-test harness: the gateway and stub provinces as real processes on 127.0.0.1, and a cutting TCP proxy."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.gongji.v1 import relations_pb2
from protos.stub.v1 import control_pb2, control_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
XINJIANG, GANSU = "650000", "620000"
PROVINCE_NAMES = {XINJIANG: "新疆", GANSU: "甘肃"}
# The seeds' pair: a Hami employee giving to his mother insured in Lanzhou (as bench/transfers.py).
GIVER = ("650502199001011230", "650500")
MOTHER = ("620102196505120026", "620100")
READY_TIMEOUT_S = 45.0
STUB_READY = re.compile(r"stub province \d+ serving on (\S+)")
GATEWAY_READY = re.compile(r"gateway ready: provinces (\S+), operators (\S+)")

# A load test sends many transfers from one giver at any hour: the giver's province lifts the daily
# limit and the blackout (D12 policy), as bench/run.py BENCH_POLICY does. Everything else is national.
GIVER_POLICY = ["daily_transfer_limit = 1000000", "blackout_start_minute = 0", "blackout_end_minute = 0"]

# Every child starts through this: it asks the kernel to kill it should the test process die without
# cleaning up (PR_SET_PDEATHSIG survives exec), then becomes the real command. Not a preexec_fn: the test
# process forks while gRPC's threads run, and running Python in such a child between fork and exec is unsafe.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)

# Reconnect soon after a restart: gRPC's default first backoff is a second and grows to two minutes.
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000),
                   # Snapshots of a few thousand transfers pass gRPC's default 4 MiB limit.
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]


class HarnessError(AssertionError):
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


class Proc:
    """One child process, restartable under the same command line; output appended to one log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.starts = 0

    def start(self) -> None:
        if self.alive:
            raise HarnessError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")}
        child_env.update(self.env)
        child_env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
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
            raise HarnessError(f"{self.name} did not stop within {timeout_s:.0f}s of SIGTERM:\n{self.tail()}") from None

    def stop(self) -> None:
        """Teardown: whatever state it is in, it is gone afterwards."""
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(8)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(5)

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
            raise HarnessError(f"{self.name} exited with code {code}:\n{self.tail()}")

    def wait_line(self, pattern: re.Pattern[str], timeout_s: float = READY_TIMEOUT_S) -> re.Match[str]:
        """Until this run of the process printed a line matching `pattern`."""
        deadline = time.monotonic() + timeout_s
        while True:
            match = pattern.search(self.output())
            if match:
                return match
            self.check_alive()
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.name} did not print {pattern.pattern!r} within {timeout_s:.0f}s:\n"
                                   f"{self.tail()}")
            time.sleep(0.05)


def health_status(channel: grpc.Channel, timeout_s: float = 1.0) -> str:
    """SERVING, NOT_SERVING, ... or the gRPC code name when the server does not answer."""
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.RpcError as error:
        return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def wait_serving(address: str, proc: Proc | None = None, timeout_s: float = READY_TIMEOUT_S,
                 channel: grpc.Channel | None = None) -> None:
    """Until grpc.health.v1 on `address` answers SERVING (on `channel` if given, which is then connected)."""
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
                raise HarnessError(f"{address} not SERVING within {timeout_s:.0f}s"
                                   + (f":\n{proc.tail()}" if proc is not None else ""))
            time.sleep(0.05)
    finally:
        if own:
            channel.close()


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """Poll `condition()` until truthy; fail after `timeout_s` (every wait in these tests is bounded)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class Deployment:
    """Two stub provinces and one or more gateways on one database, every port on 127.0.0.1."""

    workdir: Path
    db_url: str
    gateway_addresses: list[str]
    ops_addresses: list[str]
    stub_addresses: dict[str, str]
    # Each stub's control service, on a loopback port of its own (the same again after a restart).
    stub_controls: dict[str, str]
    keys_dir: Path = field(init=False)
    log_dir: Path = field(init=False)
    manifest: Path = field(init=False)
    stubs: dict[str, Proc] = field(default_factory=dict)
    gateways: list[Proc] = field(default_factory=list)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys_dir = self.workdir / "keys"
        self.log_dir = self.workdir / "logs"
        self.manifest = self.workdir / "manifest.toml"

    @classmethod
    def allocate(cls, workdir: Path, db_url: str, gateways: int = 1) -> Deployment:
        ports = free_ports(2 * gateways + 4)
        return cls(workdir, db_url,
                   gateway_addresses=[f"127.0.0.1:{p}" for p in ports[0:2 * gateways:2]],
                   ops_addresses=[f"127.0.0.1:{p}" for p in ports[1:2 * gateways:2]],
                   stub_addresses={XINJIANG: f"127.0.0.1:{ports[-4]}", GANSU: f"127.0.0.1:{ports[-3]}"},
                   stub_controls={XINJIANG: f"127.0.0.1:{ports[-2]}", GANSU: f"127.0.0.1:{ports[-1]}"})

    @property
    def gateway(self) -> Proc:
        return self.gateways[0]

    # -- stubs -------------------------------------------------------------------------------------
    def add_stub(self, code: str, gateway_address: str, *extra: str) -> Proc:
        proc = Proc(f"stub-{code}", ["-m", "province_stub", "--province", code, "--name", PROVINCE_NAMES[code],
                                     "--listen", self.stub_addresses[code],
                                     "--control-listen", self.stub_controls[code], "--gateway", gateway_address,
                                     "--keys-dir", str(self.keys_dir), *extra], {}, self.log_dir)
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
    def write_manifest(self, endpoints: dict[str, str] | None = None,
                       policies: dict[str, list[str]] | None = None) -> None:
        """The two stubs (or the given endpoints, e.g. a proxy), the giver's province lifting its limits."""
        endpoints = endpoints or self.stub_addresses
        policies = policies if policies is not None else {XINJIANG: GIVER_POLICY}
        blocks = []
        for code in (XINJIANG, GANSU):
            policy = policies.get(code, [])
            blocks.append("\n".join([
                "[[provinces]]", f'code = "{code}"', f'name = "{PROVINCE_NAMES[code]}"',
                f'endpoint = "{endpoints[code]}"',
                *(["[provinces.policy]", *policy] if policy else []),
                # Key files are read relative to the manifest's folder (gateway/manifest.py).
                "[[provinces.keys]]", f'key_id = "{code}-k1"', f'public_key_file = "keys/{code}-k1.pub"', ""]))
        self.manifest.write_text("\n".join(blocks), encoding="utf-8")

    def add_gateway(self, index: int, **env: str) -> Proc:
        settings = {
            "GONGJI_LISTEN": self.gateway_addresses[index],
            "GONGJI_OPS_LISTEN": self.ops_addresses[index],
            "GONGJI_METRICS_LISTEN": "",
            "GONGJI_DATABASE_URL": self.db_url,
            "GONGJI_MANIFEST": str(self.manifest),
            "GONGJI_GATEWAY_KEY_FILE": str(self.keys_dir / "gateway.key"),
            "GONGJI_ID_HASH_KEY_FILE": str(self.keys_dir / "id-hash.key"),
            "GONGJI_DATA_KEY_FILE": str(self.keys_dir / "data.keys"),
            # Plaintext on loopback: the stubs speak no TLS, and crashes, not transport security, are under test.
            "GONGJI_INSECURE_DEV_PLAINTEXT": "true",
            # Not what these tests are about: one driver sends everything as one province.
            "GONGJI_RATE_LIMIT_PER_SECOND": "0",
            # Retries come soon after a province (or the gateway) is back.
            "GONGJI_OUTBOX_BACKOFF_BASE_SECONDS": "0.05",
            "GONGJI_OUTBOX_BACKOFF_MAX_SECONDS": "0.5",
            # Checkpoints signed throughout the run, so verification checks many of them across the crashes.
            "GONGJI_AUDIT_CHECKPOINT_SECONDS": "1",
            # A run near 00:10 Beijing time would close yesterday's window; these tests are about transfers.
            "GONGJI_SETTLEMENT_CLOSE_ON_SCHEDULE": "false",
            **env,
        }
        name = f"gateway-{'ab'[index]}" if len(self.gateway_addresses) > 1 else "gateway"
        proc = Proc(name, ["-m", "gateway"], settings, self.log_dir)
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

    # -- stub control ------------------------------------------------------------------------------
    def channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        return channel

    def control(self, code: str) -> control_pb2_grpc.StubControlStub:
        return control_pb2_grpc.StubControlStub(self.channel(self.stub_controls[code]))

    def snapshot(self, code: str) -> control_pb2.SnapshotResponse:
        return self.control(code).Snapshot(control_pb2.SnapshotRequest(), timeout=30)

    def configure(self, code: str, **behaviour: object) -> None:
        self.control(code).Configure(control_pb2.Behaviour(**behaviour), timeout=10)  # type: ignore[arg-type]

    def bind(self) -> str:
        """The ACTIVE binding transfers need (D10): Xinjiang proposes, Gansu's stub consents by itself."""
        control = self.control(XINJIANG)
        answer = control.ProposeBinding(control_pb2.StubProposeRequest(
            giver_id_number=GIVER[0], receiver_id_number=MOTHER[0], receiver_pooling_area=MOTHER[1],
            receiver_province=GANSU, relation_code="52"), timeout=20)
        assert answer.code == "OK", f"proposing the binding failed: {answer.code} {answer.reason}"

        def active() -> bool:
            view = control.QueryBinding(control_pb2.QueryBindingRequest(binding_id=answer.subject_id), timeout=10)
            return view.binding.state == relations_pb2.BINDING_STATE_ACTIVE

        wait_until(active, READY_TIMEOUT_S, "the binding to become ACTIVE")
        return answer.subject_id

    def close(self) -> None:
        """Every process started is stopped, whatever happened; every channel closed."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        for proc in [*self.gateways, *self.stubs.values()]:
            proc.stop()

    def tails(self) -> str:
        return "\n".join(proc.tail() for proc in [*self.gateways, *self.stubs.values()])


def start_deployment(deployment: Deployment, *, gateway_env: dict[str, str] | None = None,
                     stub_gateway: dict[str, int] | None = None, endpoints: dict[str, str] | None = None,
                     policies: dict[str, list[str]] | None = None) -> str:
    """Stubs first (they write their keys), the manifest naming them, the gateway(s), then the binding.

    Answers the binding's id. `stub_gateway` says which gateway each stub calls back (default the first);
    `endpoints` where the gateway reaches each province (default the stubs themselves). The caller has
    registered deployment.close() for teardown before calling this, so a failed start leaves nothing running.
    """
    stub_gateway = stub_gateway or {}
    for code in (XINJIANG, GANSU):
        if code not in deployment.stubs:
            deployment.add_stub(code, deployment.gateway_addresses[stub_gateway.get(code, 0)])
        deployment.start_stub(code)
    deployment.write_manifest(endpoints, policies)
    for index in range(len(deployment.gateway_addresses)):
        deployment.add_gateway(index, **(gateway_env or {}))
    # Several gateways start at once, as a deployment would start them: they migrate the empty database
    # and apply the manifest concurrently.
    for proc in deployment.gateways:
        proc.start()
    for index in range(len(deployment.gateways)):
        deployment.await_gateway(index)
    return deployment.bind()


class CuttingProxy:
    """A TCP relay on 127.0.0.1 that, while `cutting`, resets a random live connection every so often.

    Both sockets of a cut connection are closed with SO_LINGER 0 (a TCP RST): whatever calls were in
    flight on that HTTP/2 connection die mid-call, as they would when a firewall or a NAT drops it.
    """

    def __init__(self, target: str, seed: int, min_gap_s: float = 0.05, max_gap_s: float = 0.4) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._random = random.Random(seed)
        self._gaps = (min_gap_s, max_gap_s)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        # accept() wakes up now and then to see whether the proxy was closed (close() does not wake it).
        self._listener.settimeout(0.2)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = threading.Event()
        self.cutting = threading.Event()
        self.cuts = 0
        self.connections = 0
        self._threads = [threading.Thread(target=self._accept, name="proxy-accept", daemon=True),
                         threading.Thread(target=self._cut, name="proxy-cut", daemon=True)]
        for thread in self._threads:
            thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, upstream))
                self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, (client, upstream)), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        self._drop(pair, reset=False)

    def _drop(self, pair: tuple[socket.socket, socket.socket], reset: bool) -> None:
        with self._lock:
            if pair not in self._pairs:
                return
            self._pairs.remove(pair)
        for sock in pair:
            with contextlib.suppress(OSError):
                if reset:
                    # Linger 0: the last close sends RST instead of FIN. SHUT_RD wakes the pump blocked in
                    # recv() (closing a socket another thread is reading does not), whose return lets it go.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RD)
                else:
                    sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _cut(self) -> None:
        while not self._closed.wait(self._random.uniform(*self._gaps)):
            if not self.cutting.is_set():
                continue
            with self._lock:
                victim = self._random.choice(self._pairs) if self._pairs else None
            if victim is not None:
                self._drop(victim, reset=True)
                self.cuts += 1

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair, reset=True)
        for thread in self._threads:
            thread.join(5)
