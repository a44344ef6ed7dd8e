"""The gateway's HTTP port: Prometheus /metrics, the operators' read-only dashboard (/) and its JSON."""

from __future__ import annotations

import dataclasses
import importlib.resources
import io
import json
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app

from gateway.domain.monitoring import DashboardSnapshot
from gateway.domain.settlement import SettlementWindow

log = logging.getLogger(__name__)

ReadSnapshot = Callable[[], DashboardSnapshot]


# -- the snapshot as JSON (amounts in whole fen, times ISO-8601 UTC) ---------------------------------


def _time(at: datetime | None) -> str | None:
    if at is None:
        return None
    if at.tzinfo is None:  # the store gives UTC; a naive value can only be UTC
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def window_to_json(window: SettlementWindow) -> dict[str, Any]:
    """{window_id, state, opens_at, closes_at, closed_at, pairs, lines, positions, provinces, acknowledged_by}; a
    clearing month's figures are its lines (Q10), a transfers' window's its pairs."""
    return {
        "window_id": window.window_id,
        "state": window.state.value,
        "opens_at": _time(window.opens_at),
        "closes_at": _time(window.closes_at),
        "closed_at": _time(window.closed_at),
        "pairs": [{"from_province": p.from_province, "to_province": p.to_province, "gross_fen": p.gross_fen,
                   "transfer_count": p.transfer_count} for p in window.pairs],
        "lines": [{"from_province": x.from_province, "to_province": x.to_province, "consumed_fen": x.consumed_fen,
                   "reversed_fen": x.reversed_fen, "net_fen": x.net_fen, "consumption_count": x.consumption_count,
                   "reversal_count": x.reversal_count} for x in window.lines],
        "positions": [{"province": p.province, "net_fen": p.net_fen} for p in window.positions],
        "provinces": window.provinces,
        "acknowledged_by": window.acknowledged_by,
    }


def snapshot_to_json(snapshot: DashboardSnapshot) -> dict[str, Any]:
    """Only the fields an operator needs; a transfer is its id, provinces, amount, state, times, reason."""
    stats = snapshot.stats
    return {
        "generated_at": _time(snapshot.at),
        "stuck_after_seconds": snapshot.stuck_after.total_seconds(),
        "provinces": [
            {"code": p.code, "name": p.name, "status": p.status.value, "endpoint": p.endpoint}
            for p in snapshot.provinces
        ],
        "recent_changes": [
            {"position": c.position, "transfer_id": c.transfer_id, "state": c.state.value, "at": _time(c.at),
             "reason": c.reason, "giver_province": c.giver_province, "receiver_province": c.receiver_province,
             "amount_fen": c.amount_fen}
            for c in snapshot.recent_changes
        ],
        "pairs": [dataclasses.asdict(pair) for pair in snapshot.pairs],
        "flows": [dataclasses.asdict(flow) for flow in snapshot.flows],
        "stats": {
            "transfers": [
                {"giver_province": f.giver_province, "receiver_province": f.receiver_province,
                 "state": f.state.value, "count": f.count, "amount_fen": f.amount_fen}
                for f in stats.transfers
            ],
            "outbox_backlog": stats.outbox_backlog,
            "oldest_undelivered": _time(stats.oldest_undelivered),
            "failed_attempts_by_province": dict(sorted(stats.failed_attempts_by_province.items())),
        },
        "quota_pairs": [
            {"giver_province": q.giver_province, "receiver_province": q.receiver_province,
             "granted_fen": q.balance.granted_fen, "consumed_fen": q.balance.consumed_fen,
             "released_fen": q.balance.released_fen, "available_fen": q.balance.available_fen,
             "consumption_count": q.consumption_count}
            for q in stats.quota_pairs
        ],
        "stuck": [
            {"transfer_id": s.transfer_id, "state": s.state.value, "giver_province": s.giver_province,
             "receiver_province": s.receiver_province, "amount_fen": s.amount_fen,
             "created_at": _time(s.created_at), "updated_at": _time(s.updated_at),
             "age_seconds": int(s.age.total_seconds()), "reason": s.reason}
            for s in snapshot.stuck
        ],
        "stuck_more": snapshot.stuck_more,
        "windows": [window_to_json(window) for window in snapshot.windows],
        "clearing_months": [window_to_json(window) for window in snapshot.clearing_months],
    }


# -- the WSGI application ----------------------------------------------------------------------------


def dashboard_html() -> bytes:
    return importlib.resources.files("gateway.api").joinpath("dashboard.html").read_bytes()


_SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
]


def _answer(start_response: StartResponse, status: str, content_type: str, body: bytes,
            extra: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            *_SECURITY_HEADERS, *extra])
    return [body]


def web_app(registry: CollectorRegistry, read_snapshot: ReadSnapshot) -> WSGIApplication:
    """GET /metrics, GET / (the dashboard page), GET /api/snapshot; 404 elsewhere, 405 for other methods."""
    metrics = make_wsgi_app(registry)
    page = dashboard_html()
    # The page loads nothing from elsewhere: a policy that says so keeps any injected markup inert.
    page_headers = [("Content-Security-Policy",
                     "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                     "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                     "frame-ancestors 'none'")]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if path not in ("/", "/metrics", "/api/snapshot"):
            return _answer(start_response, "404 Not Found", "text/plain; charset=utf-8", b"not found\n")
        if environ.get("REQUEST_METHOD") != "GET":
            return _answer(start_response, "405 Method Not Allowed", "text/plain; charset=utf-8",
                           b"only GET is allowed\n", [("Allow", "GET")])
        if path == "/metrics":
            scraped: Iterable[bytes] = metrics(environ, start_response)
            return scraped
        if path == "/":
            return _answer(start_response, "200 OK", "text/html; charset=utf-8", page, page_headers)
        try:
            body = json.dumps(snapshot_to_json(read_snapshot()), ensure_ascii=False).encode()
        except Exception:
            # The database may be down or busy: the page shows its error banner and polls again.
            log.exception("dashboard snapshot failed")
            return _answer(start_response, "503 Service Unavailable", "application/json",
                           b'{"error": "snapshot unavailable"}')
        return _answer(start_response, "200 OK", "application/json", body)

    return app


# -- the server: one thread reads requests as they arrive, a fixed pool answers them ------------------


@dataclass(frozen=True)
class HttpLimits:
    """What the HTTP port may hold: a stalled or flooding client costs a file descriptor, never a thread."""

    workers: int  # threads answering requests; as many requests again may wait their turn
    max_connections: int  # connections held at once (arriving, waiting or being answered)
    timeout_seconds: float  # to send a request's head from the connection, and to take each answer


# A browser's request head is well under 2 KiB; the stdlib would take 100 headers of 64 KiB each.
_MAX_HEAD_BYTES = 16 * 1024


def _status_only(status: str) -> bytes:
    return (f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n").encode()


_BUSY = _status_only("503 Service Unavailable")
_TOO_SLOW = _status_only("408 Request Timeout")
_TOO_LARGE = _status_only("431 Request Header Fields Too Large")


def _refuse(conn: socket.socket, answer: bytes) -> None:
    """A one-line answer if the socket takes it at once, then close: never waits on the client."""
    try:
        conn.setblocking(False)
        conn.send(answer)
    except OSError:
        pass
    conn.close()


class _Handler(WSGIRequestHandler):
    """Answers a request whose head the server has already read, so a worker never waits for a client."""

    def setup(self) -> None:
        conn, head = cast(tuple[socket.socket, bytes], self.request)
        self.request = conn
        super().setup()  # the socket's timeout (the class's `timeout`) now bounds sending the answer
        self.rfile.close()
        # A GET has no body, and the app reads none: the head is everything the request holds.
        self.rfile = io.BytesIO(head)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _Server(WSGIServer):
    request_queue_size = 128  # the kernel's accept backlog: the server thread empties it at once


def _server_class(host: str) -> type[_Server]:
    family = socket.getaddrinfo(host, None)[0][0]

    class Server(_Server):
        address_family = family

    return Server


@dataclass
class _Arriving:
    address: Any
    deadline: float
    head: bytearray = dataclasses.field(default_factory=bytearray)


class MetricsServer:
    """The gateway's HTTP port on its own threads: /metrics, the dashboard and its snapshot.

    One thread accepts connections and reads their request heads without blocking; a complete request
    goes to one of `limits.workers` threads. A connection over `limits.max_connections`, or a request
    finding the workers busy and as many waiting, is answered 503 at once; a head not sent within
    `limits.timeout_seconds` is answered 408 and closed.
    """

    def __init__(self, registry: CollectorRegistry, address: str, read_snapshot: ReadSnapshot,
                 limits: HttpLimits) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        handler = type("Handler", (_Handler,), {"timeout": limits.timeout_seconds})
        self._server: WSGIServer = make_server(host, int(port), web_app(registry, read_snapshot),
                                               _server_class(host), handler)
        self._server.socket.setblocking(False)
        self.port = int(self._server.server_port)
        self._limits = limits
        self._arriving: dict[socket.socket, _Arriving] = {}  # in order of arrival, so of deadline
        self._requests: queue.SimpleQueue[tuple[socket.socket, bytes, Any] | None] = queue.SimpleQueue()
        self._answering = 0  # requests handed to the workers and not yet answered
        self._answering_lock = threading.Lock()
        self._wake, self._waker = socket.socketpair()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._serve, name="http", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"http-{n}", daemon=True)
                          for n in range(1, limits.workers + 1)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._waker.send(b"x")
        self._threads[0].join(5)
        for _ in self._threads[1:]:
            self._requests.put(None)
        for thread in self._threads[1:]:
            thread.join(self._limits.timeout_seconds + 1)
        self._server.server_close()
        self._wake.close()
        self._waker.close()

    # -- the server thread ---------------------------------------------------------------------------

    def _serve(self) -> None:
        listener = self._server.socket
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._wake, selectors.EVENT_READ)
            while not self._stopping.is_set():
                first = next(iter(self._arriving.values()), None)
                timeout = None if first is None else max(0.0, first.deadline - time.monotonic())
                try:
                    for key, _ in selector.select(timeout):
                        if key.fileobj is listener:
                            self._accept(selector)
                        elif key.fileobj is not self._wake:
                            self._read(selector, cast(socket.socket, key.fileobj))
                    self._expire(selector)
                except Exception:  # one connection's trouble must not stop the port
                    log.exception("http: serving a connection failed")
            for conn in self._arriving:
                conn.close()
            self._arriving.clear()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        while True:
            try:
                conn, address = self._server.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. out of file descriptors: let the process breathe
                log.warning("http: cannot accept a connection: %s", error)
                self._stopping.wait(0.1)
                return
            with self._answering_lock:
                held = len(self._arriving) + self._answering
            if held >= self._limits.max_connections:
                _refuse(conn, _BUSY)
                continue
            conn.setblocking(False)
            self._arriving[conn] = _Arriving(address, time.monotonic() + self._limits.timeout_seconds)
            selector.register(conn, selectors.EVENT_READ)

    def _read(self, selector: selectors.BaseSelector, conn: socket.socket) -> None:
        arriving = self._arriving[conn]
        try:
            chunk = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        arriving.head += chunk
        complete = b"\n\r\n" in arriving.head or b"\n\n" in arriving.head
        if chunk and not complete and len(arriving.head) <= _MAX_HEAD_BYTES:
            return
        selector.unregister(conn)
        del self._arriving[conn]
        if not chunk:  # the client went away before finishing its request
            conn.close()
        elif not complete:
            _refuse(conn, _TOO_LARGE)
        else:
            with self._answering_lock:
                busy = self._answering >= 2 * self._limits.workers
                if not busy:
                    self._answering += 1
            if busy:
                _refuse(conn, _BUSY)
            else:
                conn.setblocking(True)
                self._requests.put((conn, bytes(arriving.head), arriving.address))

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        while self._arriving:
            conn, arriving = next(iter(self._arriving.items()))
            if arriving.deadline > now:
                return
            selector.unregister(conn)
            del self._arriving[conn]
            _refuse(conn, _TOO_SLOW)

    # -- the workers ---------------------------------------------------------------------------------

    def _work(self) -> None:
        while (request := self._requests.get()) is not None:
            conn, head, address = request
            try:
                self._server.RequestHandlerClass((conn, head), address, self._server)
            except OSError as error:  # the client stopped reading, or went away
                log.debug("http: answer not sent: %s", error)
            except Exception:
                log.exception("http: request failed")
            finally:
                self._server.shutdown_request(conn)
                with self._answering_lock:
                    self._answering -= 1
