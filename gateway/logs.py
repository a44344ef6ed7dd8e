"""The gateway's log lines: plain or one JSON object per line, and never an ID number in clear (D19)."""

from __future__ import annotations

import json
import logging
import sys

from gateway.config import Settings
from gateway.domain.identity import mask_id_numbers_in


class MaskIdNumbers(logging.Filter):
    """A last line of defence for D19: any ID number that reached a log line leaves it masked.

    The message, and the traceback and stack too: an exception's text can carry what a peer sent.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_id_numbers_in(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info:
            # Formatted once here, masked, and kept as the text every formatter prints instead.
            record.exc_text = mask_id_numbers_in(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = mask_id_numbers_in(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_id_numbers_in(record.stack_info)
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
    """Every log line to stderr, at GONGJI_LOG_LEVEL, as JSON when GONGJI_LOG_JSON, ID numbers masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(MaskIdNumbers())
    handler.setFormatter(JsonFormatter() if settings.log_json
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler])
