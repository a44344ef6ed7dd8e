"""python -m gateway [serve|dispatch]: read settings, configure logging, run until SIGTERM/SIGINT.

`serve` (the default) runs the gRPC servers, and either the outbox in the same process
(GONGJI_OUTBOX_DISPATCHERS=0, the default) or that many dispatcher processes, restarting one that
dies; `dispatch` is such a dispatcher: it only delivers the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import uvloop
from sqlalchemy.exc import OperationalError

from gateway.app import create_dispatcher, create_gateway
from gateway.config import ConfigError, Settings
from gateway.domain.errors import DatabaseBusy
from gateway.logs import configure_logging
from gateway.store.schema import SchemaError

log = logging.getLogger("gateway")
RESTART_DELAY_SECONDS = 1.0


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _supervise(count: int, stop: asyncio.Event) -> None:
    """Keep `count` dispatcher processes running until `stop`; then stop them."""
    children: list[subprocess.Popen[bytes] | None] = [None] * count
    try:
        while not stop.is_set():
            for index, child in enumerate(children):
                if child is not None and child.poll() is None:
                    continue
                if child is not None:
                    log.error("outbox dispatcher %d exited with code %s; restarting it", index, child.returncode)
                children[index] = subprocess.Popen([sys.executable, "-m", "gateway", "dispatch"], env=os.environ)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RESTART_DELAY_SECONDS)
    finally:
        running = [c for c in children if c is not None and c.poll() is None]
        for child in running:
            child.send_signal(signal.SIGTERM)
        for child in running:
            try:
                await asyncio.to_thread(child.wait, 10)
            except subprocess.TimeoutExpired:
                child.kill()


class DatabaseUnreachable(Exception):
    """The database could not be opened at start-up: one line for the operator, not a traceback."""


def _where(database_url: str) -> str:
    """The database URL without its credentials (user and password stay out of messages and logs)."""
    scheme, _, rest = database_url.partition("://")
    return f"{scheme}://{rest.split('@')[-1]}"


@contextlib.asynccontextmanager
async def _opening_database(settings: Settings) -> AsyncIterator[None]:
    try:
        yield
    except OperationalError as error:
        lines = str(error.orig or error).strip().splitlines()
        reason = lines[0] if lines else "unknown"
        raise DatabaseUnreachable(f"cannot open the database {_where(settings.database_url)}: {reason}") from None
    except DatabaseBusy:
        raise DatabaseUnreachable(f"the database {_where(settings.database_url)} stayed locked by another connection "
                                  f"for over {settings.database_busy_seconds:g} s while starting") from None


async def serve(settings: Settings) -> None:
    stop = _stop_event()
    async with _opening_database(settings):
        gateway = await create_gateway(settings, run_outbox=settings.outbox_dispatchers == 0)
    supervisor = asyncio.create_task(_supervise(settings.outbox_dispatchers, stop))
    log.info("gateway serving provinces on %s (port %d), operators on %s (port %d), database %s, "
             "outbox %s", settings.listen, gateway.port, settings.ops_listen, gateway.ops_port,
             _where(settings.database_url),
             f"in {settings.outbox_dispatchers} dispatcher process(es)" if settings.outbox_dispatchers
             else "in process")
    print(f"gateway ready: provinces 127.0.0.1:{gateway.port}, operators 127.0.0.1:{gateway.ops_port}", flush=True)
    await stop.wait()
    log.info("stopping: health NOT_SERVING, draining in-flight calls")
    await asyncio.gather(gateway.stop(grace=settings.stop_grace_seconds, exiting=True), supervisor)
    # Not gRPC's own server stop, which cancels (CANCELLED) a call reaching the server in the instant it stops:
    # new calls are held, and the connections close with the process, failing them UNAVAILABLE (none executed).
    await gateway.hold_calls()
    log.info("stopped")
    logging.shutdown()
    os._exit(0)


async def dispatch(settings: Settings) -> None:
    stop = _stop_event()
    async with _opening_database(settings):
        dispatcher = await create_dispatcher(settings)
    log.info("outbox dispatcher running (pid %d)", os.getpid())
    await stop.wait()
    await dispatcher.stop()


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "serve"
    if command not in ("serve", "dispatch"):
        print("usage: python -m gateway [serve|dispatch]", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"gateway: configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings)
    # uvloop: the same asyncio API on libuv; about a third more transfers per core in `make bench`.
    try:
        uvloop.run(serve(settings) if command == "serve" else dispatch(settings))
    except SchemaError as error:
        print(f"gateway: database schema: {error}", file=sys.stderr)
        return 2
    except DatabaseUnreachable as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
