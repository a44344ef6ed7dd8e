"""Crash-test harness: the launcher's stack with the stubs' control and a binding, and a cutting TCP proxy."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading

from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import relations_pb2
from scripts.launcher import GANSU, READY_TIMEOUT_S, XINJIANG, Proc, Stack, wait_until

# The seeds' pair: a Hami employee giving to his mother insured in Lanzhou (as bench/transfers.py).
GIVER = ("650502199001011230", "650500")
MOTHER = ("620102196505120026", "620100")

# A load test sends many transfers from one giver at any hour: the giver's province lifts the daily
# limit and the blackout (D12 policy), as bench/run.py BENCH_POLICY does. Everything else is national.
GIVER_POLICY = ["daily_transfer_limit = 1000000", "blackout_start_minute = 0", "blackout_end_minute = 0"]

# What every crash test's gateway is told besides its ports, database, manifest and keys.
GATEWAY_ENV = {
    "GONGJI_METRICS_LISTEN": "",
    # Not what these tests are about: one driver sends everything as one province.
    "GONGJI_RATE_LIMIT_PER_SECOND": "0",
    # Retries come soon after a province (or the gateway) is back.
    "GONGJI_OUTBOX_BACKOFF_BASE_SECONDS": "0.05",
    "GONGJI_OUTBOX_BACKOFF_MAX_SECONDS": "0.5",
    # Checkpoints signed throughout the run, so verification checks many of them across the crashes.
    "GONGJI_AUDIT_CHECKPOINT_SECONDS": "1",
    # A run near 00:10 Beijing time would close yesterday's window; these tests are about transfers.
    "GONGJI_SETTLEMENT_CLOSE_ON_SCHEDULE": "false",
}


class Deployment(Stack):
    """The launcher's stack (plaintext on loopback: crashes, not transport security, are under test), with the
    stubs' control service and the binding every transfer needs."""

    def add_gateway(self, index: int, **env: str) -> Proc:
        return super().add_gateway(index, **{**GATEWAY_ENV, **env})

    # -- stub control ------------------------------------------------------------------------------
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


def start_deployment(deployment: Deployment, *, gateway_env: dict[str, str] | None = None,
                     stub_gateway: dict[str, int] | None = None, endpoints: dict[str, str] | None = None,
                     policies: dict[str, list[str]] | None = None) -> str:
    """The launcher's start (stubs, the manifest, the gateways), the giver's province lifting its limits unless
    `policies` says otherwise; then the binding, whose id it answers.

    The caller has registered deployment.close() for teardown before calling this, so a failed start leaves
    nothing running.
    """
    deployment.start(gateway_env=gateway_env, stub_gateway=stub_gateway, endpoints=endpoints,
                     policies=policies if policies is not None else {XINJIANG: GIVER_POLICY})
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
