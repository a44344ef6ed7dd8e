"""Every API test also checks D19: no clear ID number or name of a seeded person in any log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.support import CLEAR_PERSONAL_DATA


@pytest.fixture(autouse=True)
def no_clear_personal_data_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)  # the most talkative setting: whatever any level would print
    yield
    # caplog.text holds only the current (teardown) phase: read every phase's records.
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in records)
    leaked = [value[:6] + "…" for value in CLEAR_PERSONAL_DATA if value in text]
    assert not leaked, f"clear personal data in the logs (D19): {leaked}"
