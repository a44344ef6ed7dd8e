"""`gongji stats`: transfers by province pair and state, the outbox backlog and delivery failures."""

from __future__ import annotations

from rich.table import Table

from gateway.addresses import DEFAULT_OPS_LISTEN
from gateway.cli.connection import TIMEOUT_S, AsJson, OpsAddress, operations
from gateway.cli.output import add_row, console, print_json, shown, transfer_state, yuan
from protos.gongji.v1 import operations_pb2


def stats(ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False) -> None:
    """Transfers by province pair and state, the outbox backlog and delivery failures."""
    with operations(ops) as stub:
        answer = stub.GetStats(operations_pb2.GetStatsRequest(), timeout=TIMEOUT_S)
    if as_json:
        print_json(answer)
        return
    table = Table("from", "to", "state", "count", "amount")
    for s in answer.transfers:
        add_row(table, s.giver_province, s.receiver_province, transfer_state(s.state), str(s.count), yuan(s.amount_fen))
    console.print(table)
    console.print(f"outbox backlog: {answer.outbox_backlog}; failed delivery attempts: "
                  + (", ".join(f"{shown(f.province)} {f.failed_attempts}" for f in answer.delivery_failures)
                     or "none"))
