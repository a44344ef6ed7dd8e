"""The operators' `gongji` CLI against a running gateway (typer's runner, real gRPC)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from gateway.cli import app
from protos.gongji.v1 import transfers_pb2
from tests.support import GANSU, XINJIANG, Stack

runner = CliRunner()


def gongji(stack: Stack, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--ops", f"127.0.0.1:{stack.gateway.ops_port}"])
    return result.exit_code, result.output


def test_provinces_transfers_watch_and_stats(stack: Stack) -> None:
    code, out = gongji(stack, "provinces", "list", "--json")
    assert code == 0 and {p["code"] for p in json.loads(out)["provinces"]} == {XINJIANG, GANSU}

    transfer_id = stack.submit(stack.instruction(amount_fen=12_345)).transfer_id
    stack.wait_for_state(transfer_id, transfers_pb2.TRANSFER_STATE_COMMITTED)
    code, out = gongji(stack, "transfers", "list", "--json", "--state", "committed")
    listed = json.loads(out)
    assert code == 0 and [t["transfer_id"] for t in listed] == [transfer_id]
    assert listed[0]["giver_id_masked"] == "650502********1230"  # never a clear ID (D19)

    code, out = gongji(stack, "transfers", "watch", "--cursor", "0", "--count", "3", "--json")
    states = [json.loads(line)["state"] for line in out.splitlines()]
    assert code == 0 and states == ["TRANSFER_STATE_RECEIVED", "TRANSFER_STATE_DELIVERED", "TRANSFER_STATE_COMMITTED"]

    code, out = gongji(stack, "stats")
    assert code == 0 and "123.45" in out and "COMMITTED" in out

    code, out = gongji(stack, "provinces", "suspend", GANSU)
    assert code == 0 and "SUSPENDED" in out
    code, out = gongji(stack, "provinces", "resume", GANSU)
    assert code == 0 and "ACTIVE" in out


def test_expected_failures_are_one_line_without_a_traceback(stack: Stack) -> None:
    code, out = gongji(stack, "provinces", "suspend", "130000")
    assert code == 1 and "NOT_FOUND PROVINCE_NOT_FOUND" in out and "Traceback" not in out
    code, out = gongji(stack, "transfers", "list", "--state", "nonsense")
    assert code == 2 and "unknown state" in out
