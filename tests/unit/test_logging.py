"""Log lines: one JSON object per line when configured, and never an ID number in clear (D19)."""

from __future__ import annotations

import io
import json
import logging

from gateway.logs import JsonFormatter, MaskIdNumbers


def _logger(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    """A logger of its own writing through the gateway's filter and `formatter` into a string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskIdNumbers())
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test-logging-{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    return logger, stream


def _emit(formatter: logging.Formatter, message: str, *args: object) -> str:
    logger, stream = _logger(formatter)
    logger.warning(message, *args)
    return stream.getvalue()


def test_json_lines_carry_level_logger_and_message() -> None:
    line = _emit(JsonFormatter(), "transfer %s refused: %s", "650000-abc", "BINDING_NOT_ACTIVE")
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"].startswith("test-logging")
    assert entry["message"] == "transfer 650000-abc refused: BINDING_NOT_ACTIVE" and "time" in entry


def test_an_id_number_that_reaches_a_log_line_leaves_it_masked() -> None:
    for formatter in (JsonFormatter(), logging.Formatter("%(message)s")):
        text = _emit(formatter, "giver %s, receiver 62010219650512002X", "650502199001011230")
        assert "650502199001011230" not in text and "62010219650512002X" not in text
        assert "650502********1230" in text and "620102********002X" in text
    # Other long numbers (amounts, ids with letters around) are left alone.
    assert "1234567890123456789" in _emit(JsonFormatter(), "amount 1234567890123456789")
    assert "tr-650502199001011230x" in _emit(JsonFormatter(), "id tr-650502199001011230x")


def test_an_id_number_in_an_exception_or_stack_leaves_masked_too() -> None:
    for formatter in (JsonFormatter(), logging.Formatter("%(message)s")):
        logger, stream = _logger(formatter)
        try:
            raise ValueError("a province answered: no person 650502199001011230")
        except ValueError:
            logger.exception("delivery failed")
        logger.warning("stack", stack_info=True)  # the stack's own text, masked alike
        text = stream.getvalue()
        assert "650502199001011230" not in text and "650502********1230" in text
        assert "ValueError" in text and "Traceback" in text
