"""python -m bench.echo_server: the ceiling, a bare grpc.aio unary method that answers the request bytes.

No interceptor, no (de)serialisation, no work: what the transport alone costs on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import grpc
import grpc.aio
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ECHO_METHOD = "/gongji.bench.v1.Echo/Echo"
_SERVICE, _METHOD = ECHO_METHOD.strip("/").split("/")


def _identity(data: bytes) -> bytes:
    return data


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def serve_until_stopped(server: grpc.aio.Server, listen: str, name: str, max_seconds: float) -> None:
    """Serve (health SERVING, "<name> ready on host:port" printed) until SIGTERM/SIGINT or max_seconds."""
    # grpc-stubs describe only the synchronous health servicer.
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"{name}: cannot listen on {listen}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    host = listen.rsplit(":", 1)[0]
    print(f"{name} ready on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Bounded even if the bench that started it disappears without stopping it.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    await server.stop(1.0)


async def serve(listen: str, max_seconds: float) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        _echo, request_deserializer=_identity, response_serializer=_identity
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, {_METHOD: handler}),))
    await serve_until_stopped(server, listen, "echo", max_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: any)")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop by itself after this long")
    args = parser.parse_args()
    uvloop.run(serve(args.listen, args.max_seconds))  # the same event loop as the gateway: a fair ceiling


if __name__ == "__main__":
    main()
