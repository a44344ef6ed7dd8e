"""python -m gateway [serve|dispatch]: read settings, configure logging, run until SIGTERM/SIGINT.

`serve` (the default) runs the gRPC servers, and either the outbox in the same process
(GONGJI_OUTBOX_DISPATCHERS=0, the default) or that many dispatcher processes, restarting one that
dies; `dispatch` is such a dispatcher: it only delivers the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import uvloop
from sqlalchemy.exc import OperationalError

from gateway.app import create_dispatcher, create_gateway
from gateway.config import ConfigError, Settings
from gateway.domain.identity import mask_id_number
from gateway.store.schema import SchemaError

# 18-character resident ID numbers (17 digits and a check character) standing alone in text.
ID_NUMBER_IN_TEXT = re.compile(r"(?<![0-9A-Za-z])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")

log = logging.getLogger("gateway")
RESTART_DELAY_SECONDS = 1.0


def _masked(text: str) -> str:
    return ID_NUMBER_IN_TEXT.sub(lambda m: mask_id_number(m.group(0)), text)


class MaskIdNumbers(logging.Filter):
    """A last line of defence for D19: any ID number that reached a log line leaves it masked.

    The message, and the traceback and stack too: an exception's text can carry what a peer sent.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _masked(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info:
            # Formatted once here, masked, and kept as the text every formatter prints instead.
            record.exc_text = _masked(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = _masked(record.exc_text)
        if record.stack_info:
            record.stack_info = _masked(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        exception = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else "")
        if exception:
            entry["exception"] = exception
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(MaskIdNumbers())
    handler.setFormatter(JsonFormatter() if settings.log_json
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler])


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
    await gateway.stop(grace=5.0)
    await supervisor


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
