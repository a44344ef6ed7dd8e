"""Running the operators' `gongji` CLI in-process against a test stack (typer's runner, real gRPC)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from gateway.cli import app
from gateway.cli.output import console, err_console
from protos.gongji.v1 import transfers_pb2
from tests.support import Stack

runner = CliRunner()
COMMITTED = transfers_pb2.TRANSFER_STATE_COMMITTED


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide terminal, so that rich wraps no table cell or path, whatever runs the tests (the consoles are
    made at import, so a COLUMNS given to one command would come too late; a pytest-xdist worker has no
    terminal at all). Imported by each CLI test module, where it applies to every test."""
    for each in (console, err_console):
        monkeypatch.setattr(each, "width", 250)


def invoke(stack: Stack, *args: str) -> Result:
    # The test stacks are plaintext: a var/tls/ left by `make run` in the checkout must not be used.
    return runner.invoke(app, [*args, "--ops", f"127.0.0.1:{stack.gateway.ops_port}"],
                         env={"GONGJI_INSECURE_DEV_PLAINTEXT": "true"})


def gongji(stack: Stack, *args: str) -> tuple[int, str]:
    """Exit code and everything printed (stdout and stderr)."""
    result = invoke(stack, *args)
    return result.exit_code, result.output


def gongji_json(stack: Stack, *args: str) -> Any:
    """A command's --json answer; stdout must hold nothing else."""
    result = invoke(stack, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def committed(stack: Stack, *amounts_fen: int) -> list[str]:
    ids = [stack.submit(stack.instruction(amount_fen=amount)).transfer_id for amount in amounts_fen]
    for transfer_id in ids:
        stack.wait_for_state(transfer_id, COMMITTED)
    return ids
