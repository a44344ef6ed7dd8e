"""Production layout: a gateway whose key files sit in its database's folder says so, once, at start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support import LoopThread, start_stack

WARNING = "inside the database's folder"


def started_with(loop_thread: LoopThread, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                 **settings: object) -> list[logging.LogRecord]:
    """The warnings a gateway with its database in tmp_path/data logs while it starts and stops."""
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        stack = start_stack(loop_thread, tmp_path, f"sqlite:///{tmp_path / 'data' / 'gongji.db'}", with_stubs=False,
                            **settings)
        stack.close()
    return [r for r in caplog.records if WARNING in r.getMessage()]


def test_keys_in_the_database_folder_are_one_warning_line(loop_thread: LoopThread, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    keys = tmp_path / "data" / "keys"
    warnings = started_with(loop_thread, tmp_path, caplog, development=False, gateway_key_file=keys / "gateway.key",
                            id_hash_key_file=keys / "id-hash.key", data_key_file=keys / "data.keys")
    assert len(warnings) == 1
    assert "id-hash.key" in warnings[0].getMessage() and "data.keys" in warnings[0].getMessage()


def test_keys_elsewhere_or_a_development_stack_say_nothing(loop_thread: LoopThread, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    keys = tmp_path / "secrets"
    assert started_with(loop_thread, tmp_path, caplog, development=False, gateway_key_file=keys / "gateway.key",
                        id_hash_key_file=keys / "id-hash.key", data_key_file=keys / "data.keys") == []
    beside = tmp_path / "dev" / "data" / "keys"
    assert started_with(loop_thread, tmp_path / "dev", caplog, development=True, gateway_key_file=beside / "g.key",
                        id_hash_key_file=beside / "id.key", data_key_file=beside / "d.keys") == []
