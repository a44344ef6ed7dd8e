"""`gongji`: the operators' command line, a client of the Operations service (typer + rich)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from typing import Annotated, Any

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.console import Console
from rich.table import Table

from protos.gongji.v1 import operations_pb2, operations_pb2_grpc, transfers_pb2

app = typer.Typer(help="Operate the Gongji exchange: provinces, transfers, stats.", no_args_is_help=True)
provinces_app = typer.Typer(help="The routing table.", no_args_is_help=True)
transfers_app = typer.Typer(help="Transfers.", no_args_is_help=True)
app.add_typer(provinces_app, name="provinces")
app.add_typer(transfers_app, name="transfers")
console = Console()

OpsAddress = Annotated[str, typer.Option("--ops", envvar="GONGJI_OPS", help="The gateway's operators' port.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TIMEOUT_S = 10.0


@contextmanager
def operations(address: str) -> Iterator[operations_pb2_grpc.OperationsStub]:
    """A client for one command; expected failures become a one-line message and exit code 1."""
    with grpc.insecure_channel(address) as channel:
        try:
            yield operations_pb2_grpc.OperationsStub(channel)
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            reason = ""
            for detail in status.details if status else ():
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason = f" {info.reason}"
            console.print(f"[red]error:[/red] {error.code().name}{reason}: {error.details()}")
            raise typer.Exit(1) from None


def _json(message: Any) -> None:
    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), ensure_ascii=False, indent=2))


def _state(value: int) -> str:
    return transfers_pb2.TransferState.Name(value).removeprefix("TRANSFER_STATE_")  # type: ignore[arg-type]


def _status(value: int) -> str:
    return operations_pb2.ProvinceStatus.Name(value).removeprefix("PROVINCE_STATUS_")  # type: ignore[arg-type]


@provinces_app.command("list")
def provinces_list(ops: OpsAddress = "127.0.0.1:50052", as_json: AsJson = False) -> None:
    """Every province in the routing table."""
    with operations(ops) as stub:
        answer = stub.ListProvinces(operations_pb2.ListProvincesRequest(), timeout=TIMEOUT_S)
    if as_json:
        _json(answer)
        return
    table = Table("code", "name", "endpoint", "status", "keys")
    for p in answer.provinces:
        table.add_row(p.code, p.name, p.endpoint, _status(p.status), ", ".join(k.key_id for k in p.keys))
    console.print(table)


def _set_status(ops: str, code: str, status: int) -> None:
    with operations(ops) as stub:
        answer = stub.UpdateProvince(operations_pb2.UpdateProvinceRequest(code=code, status=status),  # type: ignore[arg-type]
                                     timeout=TIMEOUT_S)
    console.print(f"province {answer.province.code} is now {_status(answer.province.status)}")


@provinces_app.command("suspend")
def provinces_suspend(code: str, ops: OpsAddress = "127.0.0.1:50052") -> None:
    """Suspend a province: it can neither submit nor receive until resumed."""
    _set_status(ops, code, operations_pb2.PROVINCE_STATUS_SUSPENDED)


@provinces_app.command("resume")
def provinces_resume(code: str, ops: OpsAddress = "127.0.0.1:50052") -> None:
    """Make a suspended province active again."""
    _set_status(ops, code, operations_pb2.PROVINCE_STATUS_ACTIVE)


@transfers_app.command("list")
def transfers_list(ops: OpsAddress = "127.0.0.1:50052", as_json: AsJson = False,
                   state: Annotated[list[str] | None, typer.Option(help="e.g. COMMITTED (repeatable)")] = None,
                   limit: Annotated[int, typer.Option(help="At most this many.")] = 100) -> None:
    """Transfers, oldest first (personal data masked)."""
    try:
        states = [transfers_pb2.TransferState.Value(f"TRANSFER_STATE_{s.upper()}") for s in state or []]
    except ValueError:
        console.print(f"[red]error:[/red] unknown state in {state}")
        raise typer.Exit(2) from None
    rows: list[transfers_pb2.TransferView] = []
    token = ""
    with operations(ops) as stub:
        while len(rows) < limit:
            page = stub.ListTransfers(operations_pb2.ListTransfersRequest(
                states=states, page_size=min(1000, limit - len(rows)), page_token=token), timeout=TIMEOUT_S)
            rows += page.transfers
            token = page.next_page_token
            if not token:
                break
    if as_json:
        print(json.dumps([MessageToDict(t, preserving_proto_field_name=True) for t in rows], ensure_ascii=False))
        return
    table = Table("transfer", "state", "from", "to", "giver", "receiver", "yuan", "created (UTC)")
    for t in rows:
        table.add_row(t.transfer_id, _state(t.state), t.giver_province, t.receiver_province, t.giver_id_masked,
                      t.receiver_id_masked, f"{t.amount_fen / 100:.2f}",
                      t.created_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


@transfers_app.command("watch")
def transfers_watch(ops: OpsAddress = "127.0.0.1:50052", as_json: AsJson = False,
                    cursor: Annotated[str, typer.Option(help="Resume after this cursor.")] = "",
                    count: Annotated[int, typer.Option(help="Stop after this many changes (0: never).")] = 0) -> None:
    """Every transfer state change as it happens (Ctrl-C stops)."""
    seen = 0
    with operations(ops) as stub:
        stream = stub.WatchTransfers(operations_pb2.WatchTransfersRequest(from_cursor=cursor))
        try:
            for change in stream:
                if as_json:
                    print(json.dumps(MessageToDict(change, preserving_proto_field_name=True)), flush=True)
                else:
                    console.print(f"{change.cursor:>8}  {change.transfer_id}  {_state(change.state):<10} "
                                  f"{change.giver_province}->{change.receiver_province}  "
                                  f"{change.amount_fen / 100:.2f} {change.reason}")
                seen += 1
                if count and seen >= count:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]


@app.command("stats")
def stats(ops: OpsAddress = "127.0.0.1:50052", as_json: AsJson = False) -> None:
    """Transfers by province pair and state, the outbox backlog and delivery failures."""
    with operations(ops) as stub:
        answer = stub.GetStats(operations_pb2.GetStatsRequest(), timeout=TIMEOUT_S)
    if as_json:
        _json(answer)
        return
    table = Table("from", "to", "state", "count", "yuan")
    for s in answer.transfers:
        table.add_row(s.giver_province, s.receiver_province, _state(s.state), str(s.count), f"{s.amount_fen / 100:.2f}")
    console.print(table)
    console.print(f"outbox backlog: {answer.outbox_backlog}; failed delivery attempts: "
                  + (", ".join(f"{f.province} {f.failed_attempts}" for f in answer.delivery_failures) or "none"))


def main() -> None:
    app()
