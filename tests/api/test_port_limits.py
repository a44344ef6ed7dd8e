"""The gateway's ports under idle and silent connections: threads and descriptors stay bounded, calls answer."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import Settings
from gateway.security.tls import GATEWAY_DNS
from tests.support import XINJIANG, LoopThread, error_of, start_stack, wait_until

DEFAULTS = Settings()  # the production defaults: the tests below run with them
IDLE_CONNECTIONS = 300


def http_get(port: int, path: str) -> tuple[int, bytes, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read(), answer.getheader("Content-Type", "")
    finally:
        connection.close()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def read_until_closed(sockets: list[socket.socket], within: float) -> list[bytes]:
    """What each socket received before the server closed it; fails if one is still open after `within` s."""
    deadline = time.monotonic() + within
    received = []
    for sock in sockets:
        data = b""
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                chunk = b""
            except TimeoutError:
                raise AssertionError(f"a connection was still open after {within} s") from None
            if not chunk:
                break
            data += chunk
        received.append(data)
    return received


def test_idle_connections_to_the_http_port_hold_no_thread_and_leave_the_provinces_calls_alone(
        loop_thread: LoopThread, tmp_path: Path, sqlite_url: str) -> None:
    # Before: a thread per connection, no read timeout, no cap — 300 idle sockets held 300 threads
    # (and 300 descriptors, which with a lowered file limit made the provinces' calls fail).
    stack = start_stack(loop_thread, tmp_path, sqlite_url, metrics_listen="127.0.0.1:0")
    port = stack.gateway.metrics_port
    assert port is not None
    idle: list[socket.socket] = []
    try:
        transfer_id = stack.submit(stack.instruction()).transfer_id
        assert stack.get(transfer_id, timeout=2).transfer_id == transfer_id
        threads, descriptors = threading.active_count(), open_descriptors()

        # A few idle connections take no worker: the port answers while they are open.
        idle += [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(10)]
        assert http_get(port, "/metrics")[0] == 200
        idle += [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(IDLE_CONNECTIONS - 10)]
        # Connections are taken in order: once this one is answered or refused, all before it were.
        assert http_get(port, "/metrics")[0] in (200, 503)

        assert threading.active_count() <= threads + 2, "the HTTP port started a thread per connection"
        # The test's own ends of the sockets, and what the port holds (never more than its cap).
        assert open_descriptors() - descriptors <= len(idle) + DEFAULTS.http_max_connections + 16
        assert stack.get(transfer_id, timeout=2).transfer_id == transfer_id

        # Beyond the cap a connection is refused at once; the others are closed when their time is up.
        answers = Counter(data.split(b"\r\n", 1)[0] for data in
                          read_until_closed(idle, DEFAULTS.http_timeout_seconds + 5))
        assert set(answers) <= {b"HTTP/1.0 503 Service Unavailable", b"HTTP/1.0 408 Request Timeout"}, answers
        assert answers[b"HTTP/1.0 503 Service Unavailable"] >= IDLE_CONNECTIONS - DEFAULTS.http_max_connections

        wait_until(lambda: http_get(port, "/metrics")[0] == 200, what="/metrics to answer again")
        status, page, content_type = http_get(port, "/")
        assert (status, content_type) == (200, "text/html; charset=utf-8") and b"<html" in page.lower()
        status, body, content_type = http_get(port, "/api/snapshot")
        assert (status, content_type) == (200, "application/json")
        assert {p["code"] for p in json.loads(body)["provinces"]} >= {XINJIANG}
        assert threading.active_count() <= threads + 2
    finally:
        for sock in idle:
            sock.close()
        stack.close()


def test_a_connection_that_never_starts_tls_is_dropped_within_ten_seconds(
        loop_thread: LoopThread, tmp_path: Path, sqlite_url: str) -> None:
    # gRPC core's default gives a connection 120 s to finish TLS and send its HTTP/2 settings.
    stack = start_stack(loop_thread, tmp_path, sqlite_url, with_stubs=False, tls_dir=tmp_path / "tls")
    try:
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5)
                  for port in (stack.gateway.port, stack.gateway.ops_port)]
        try:
            assert read_until_closed(silent, 10 + 1.5) == [b"", b""]
        finally:
            for sock in silent:
                sock.close()
    finally:
        stack.close()


def _health(port: int) -> health_pb2.HealthCheckResponse:
    """A health check on a new connection (channels in one process otherwise share theirs)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


def test_a_grpc_port_refuses_connections_beyond_its_cap_and_keeps_serving_those_it_holds(
        loop_thread: LoopThread, tmp_path: Path, sqlite_url: str) -> None:
    stack = start_stack(loop_thread, tmp_path, sqlite_url, with_stubs=False, grpc_max_connections=4)
    port = stack.gateway.port
    held = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(held)
    idle: list[socket.socket] = []
    try:
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        # The cap is full: a new connection is closed on arrival, one already held still answers.
        assert error_of(lambda: _health(port)).code == grpc.StatusCode.UNAVAILABLE
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        for sock in idle:
            sock.close()

        def answers() -> bool:
            try:
                return _health(port).status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                return False

        wait_until(answers, what="a new connection to be taken once the idle ones closed")
    finally:
        for sock in idle:
            sock.close()
        held.close()
        stack.close()


def _http2_settings(tls: ssl.SSLSocket) -> dict[int, int]:
    """The server's first SETTINGS frame, after our connection preface (RFC 9113 §3.4, §6.5)."""
    tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + bytes([4, 0]) + bytes(4))
    buffer = b""
    while True:
        while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
            chunk = tls.recv(4096)
            assert chunk, "the server closed the connection before its SETTINGS"
            buffer += chunk
        length, kind, flags = int.from_bytes(buffer[:3], "big"), buffer[3], buffer[4]
        payload, buffer = buffer[9:9 + length], buffer[9 + length:]
        if kind == 4 and not flags & 1:  # SETTINGS, not an acknowledgement
            return {key: value for key, value in struct.iter_unpack(">HI", payload)}


def test_a_grpc_port_allows_a_hundred_calls_at_once_per_connection(
        loop_thread: LoopThread, tmp_path: Path, sqlite_url: str) -> None:
    stack = start_stack(loop_thread, tmp_path, sqlite_url, with_stubs=False, tls_dir=tmp_path / "tls")
    try:
        assert stack.tls is not None
        context = ssl.create_default_context(cafile=str(stack.tls.cert_file))
        files = stack.tls.files(f"province-{XINJIANG}")
        context.load_cert_chain(str(files.cert), str(files.key))
        context.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", stack.gateway.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=GATEWAY_DNS) as tls:
            assert _http2_settings(tls).get(0x3) == 100  # SETTINGS_MAX_CONCURRENT_STREAMS
    finally:
        stack.close()
