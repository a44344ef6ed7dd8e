"""python -m bench.pipeline: the transfer flow's five RPCs between the same processes, doing no work.

The lifecycle ceiling. A relay gateway and two relay provinces, each a bare grpc.aio process like
the echo server, pass one request's bytes along the path a transfer takes through the real ones:

    driver --Submit--> gateway --Deliver--> receiver --Confirm--> gateway --Notify--> both provinces

Nothing is signed, stored, checked or retried; each hop answers at once and makes the next call in a
task of its own, as the real outbox and confirmer do. Whatever rate this reaches is the most any
implementation of the flow on grpc.aio could reach on this machine with these processes: the bench
runs it side by side with the echo and the real flow, so the real one can be judged against both.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from collections.abc import Coroutine
from typing import Any

import grpc
import grpc.aio
import uvloop

from bench.echo_server import serve_until_stopped

SERVICE = "gongji.bench.v1.Relay"
SUBMIT = f"/{SERVICE}/Submit"
DELIVER = f"/{SERVICE}/Deliver"
CONFIRM = f"/{SERVICE}/Confirm"
NOTIFY = f"/{SERVICE}/Notify"
COUNT = f"/{SERVICE}/Count"
KEY_BYTES = 16
DEADLINE_S = 10.0
# Calls a hop could not make (deadline, refused): each is a lifecycle that cannot complete.
_failures = [0]


def _identity(data: bytes) -> bytes:
    return data


def relay_method(channel: grpc.aio.Channel, name: str) -> Any:
    return channel.unary_unary(name, request_serializer=_identity, response_deserializer=_identity)


async def _forward(call: Any, request: bytes) -> None:
    try:
        await call(request, timeout=DEADLINE_S)
    except grpc.aio.AioRpcError:
        _failures[0] += 1


class Tasks:
    """Fire-and-forget calls, kept referenced until done (asyncio holds tasks weakly), at most
    IN_FLIGHT at once — as the gateway's outbox sends a bounded number (4 batches of 64) and leaves the
    rest waiting: a call waiting its turn has no deadline running yet."""

    IN_FLIGHT = 256

    def __init__(self) -> None:
        self._running: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.IN_FLIGHT)

    def spawn(self, call: Any, request: bytes) -> None:
        self.spawn_coroutine(_forward(call, request))

    def spawn_coroutine(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._bounded(work))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _bounded(self, work: Coroutine[Any, Any, None]) -> None:
        async with self._slots:
            await work


def count_handler(notified: list[float], served: list[float]) -> Any:
    async def count(request: bytes, context: Any) -> bytes:
        """In [since, until] (two doubles in): notifications that arrived, calls this process served, and
        calls it could not make (three integers out)."""
        since, until = struct.unpack("<dd", request)
        inside = sum(1 for at in notified if since <= at <= until)
        calls = sum(1 for at in served if since <= at <= until)
        return struct.pack("<qqq", inside, calls, _failures[0])

    return count


def gateway_handlers(receiver: grpc.aio.Channel, provinces: list[grpc.aio.Channel]) -> dict[str, Any]:
    tasks = Tasks()
    deliver = relay_method(receiver, DELIVER)
    notifies = [relay_method(channel, NOTIFY) for channel in provinces]
    served: list[float] = []  # when each Submit and Confirm arrived (wall clock, as the driver's)

    async def submit(request: bytes, context: Any) -> bytes:
        served.append(time.time())
        tasks.spawn(deliver, request)
        return request

    async def confirm(request: bytes, context: Any) -> bytes:
        served.append(time.time())
        for notify in notifies:
            tasks.spawn(notify, request)
        return request

    return {"Submit": submit, "Confirm": confirm, "Count": count_handler([], served)}


def province_handlers(gateway: grpc.aio.Channel) -> dict[str, Any]:
    tasks = Tasks()
    confirm = relay_method(gateway, CONFIRM)
    notified: list[float] = []  # when each notification arrived (wall clock, as the driver's)
    served: list[float] = []

    async def deliver(request: bytes, context: Any) -> bytes:
        served.append(time.time())
        tasks.spawn(confirm, request)
        return request

    async def notify(request: bytes, context: Any) -> bytes:
        notified.append(now := time.time())
        served.append(now)
        return request

    return {"Deliver": deliver, "Notify": notify, "Count": count_handler(notified, served)}


def add_handlers(server: grpc.aio.Server, handlers: dict[str, Any]) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(handler, request_deserializer=_identity,
                                                  response_serializer=_identity)
        for name, handler in handlers.items()
    }),))


async def serve_relay(name: str, listen: str, handlers: dict[str, Any], channels: list[grpc.aio.Channel],
                      max_seconds: float) -> None:
    """Serve a relay's handlers until stopped, then close its channels to the other relays."""
    server = grpc.aio.server()
    add_handlers(server, handlers)
    await serve_until_stopped(server, listen, name, max_seconds)
    for channel in channels:
        await channel.close(None)


def relay_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The arguments every relay process takes (bench.pipeline, bench.floor)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=("gateway", "province"))
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--peer", action="append", default=[], required=True,
                        help="gateway: each province (the receiver last); province: the gateway")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop by itself after this long")
    return parser


async def serve(role: str, listen: str, peers: list[str], max_seconds: float) -> None:
    channels = [grpc.aio.insecure_channel(peer) for peer in peers]
    # The gateway's last peer is the receiving province; a province's one peer is the gateway.
    handlers = gateway_handlers(channels[-1], channels) if role == "gateway" else province_handlers(channels[0])
    await serve_relay(f"pipeline {role}", listen, handlers, channels, max_seconds)


def main() -> None:
    args = relay_parser("python -m bench.pipeline", __doc__).parse_args()
    uvloop.run(serve(args.role, args.listen, args.peer, args.max_seconds))  # the loop the real ones use


if __name__ == "__main__":
    main()
