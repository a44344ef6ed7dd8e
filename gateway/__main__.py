"""python -m gateway: read settings, configure logging, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from gateway.app import create_gateway
from gateway.config import ConfigError, Settings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler])


async def serve(settings: Settings) -> None:
    gateway = await create_gateway(settings)
    log = logging.getLogger("gateway")
    log.info("gateway serving provinces on %s (port %d), operators on %s (port %d), database %s",
             settings.listen, gateway.port, settings.ops_listen, gateway.ops_port,
             settings.database_url.split("@")[-1])
    print(f"gateway ready: provinces 127.0.0.1:{gateway.port}, operators 127.0.0.1:{gateway.ops_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: health NOT_SERVING, draining in-flight calls")
    await gateway.stop(grace=5.0)


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"gateway: configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
