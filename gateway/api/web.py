"""The gateway's HTTP port: Prometheus /metrics, the operators' read-only dashboard (/) and its JSON."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import Any
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
    """{window_id, state, opens_at, closes_at, closed_at, pairs, positions, provinces, acknowledged_by}."""
    return {
        "window_id": window.window_id,
        "state": window.state.value,
        "opens_at": _time(window.opens_at),
        "closes_at": _time(window.closes_at),
        "closed_at": _time(window.closed_at),
        "pairs": [{"from_province": p.from_province, "to_province": p.to_province, "gross_fen": p.gross_fen,
                   "transfer_count": p.transfer_count} for p in window.pairs],
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
        "stuck": [
            {"transfer_id": s.transfer_id, "state": s.state.value, "giver_province": s.giver_province,
             "receiver_province": s.receiver_province, "amount_fen": s.amount_fen,
             "created_at": _time(s.created_at), "updated_at": _time(s.updated_at),
             "age_seconds": int(s.age.total_seconds()), "reason": s.reason}
            for s in snapshot.stuck
        ],
        "stuck_more": snapshot.stuck_more,
        "windows": [window_to_json(window) for window in snapshot.windows],
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


# -- the server --------------------------------------------------------------------------------------


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One daemon thread per request, as prometheus-client's own server does."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


def _server_class(host: str) -> type[_ThreadingWSGIServer]:
    family = socket.getaddrinfo(host, None)[0][0]

    class Server(_ThreadingWSGIServer):
        address_family = family

    return Server


class MetricsServer:
    """The gateway's HTTP port on its own threads: /metrics, the dashboard and its snapshot."""

    def __init__(self, registry: CollectorRegistry, address: str, read_snapshot: ReadSnapshot) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        self._server: WSGIServer = make_server(host, int(port), web_app(registry, read_snapshot),
                                               _server_class(host), _QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()
        self.port = int(self._server.server_port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
