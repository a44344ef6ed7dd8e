"""`gongji transfers ...`: list (page after page), show with its history and deliveries, watch as they change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Column, Table

from gateway.addresses import DEFAULT_OPS_LISTEN
from gateway.cli.connection import TIMEOUT_S, AsJson, OpsAddress, operations
from gateway.cli.output import (
    NONE,
    add_row,
    as_dict,
    beijing_time,
    console,
    err_console,
    fail,
    field_grid,
    json_text,
    shown,
    transfer_state,
    yuan,
)
from gateway.cli.times import TIME_HELP, parse_time, timestamp_of
from protos.gongji.v1 import operations_pb2, transfers_pb2

transfers_app = typer.Typer(help="Transfers.", no_args_is_help=True)


def _transfer_states(names: list[str] | None) -> list[transfers_pb2.TransferState.ValueType]:
    try:
        return [transfers_pb2.TransferState.Value(f"TRANSFER_STATE_{s.upper()}") for s in names or []]
    except ValueError:
        fail(f"unknown state in {names}", 2)


@transfers_app.command("list")
def transfers_list(
    ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False,
    state: Annotated[list[str] | None, typer.Option(help="e.g. COMMITTED (repeatable)")] = None,
    giver_province: Annotated[str, typer.Option("--from", help="Only from this province.")] = "",
    receiver_province: Annotated[str, typer.Option("--to", help="Only to this province.")] = "",
    since: Annotated[str | None, typer.Option(help=f"Only those created at or after: {TIME_HELP}.",
                                              show_default=False)] = None,
    until: Annotated[str | None, typer.Option(help="Only those created before (as --since).",
                                              show_default=False)] = None,
    oldest_first: Annotated[bool, typer.Option("--oldest-first", help="Oldest first instead.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (ignored with --all).")] = 100,
    every: Annotated[bool, typer.Option("--all", help="Every matching transfer, page after page.")] = False,
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Transfers per request.")] = 1000,
) -> None:
    """Transfers, newest first (personal data masked); a line on stderr says when more match than are shown."""
    states = _transfer_states(state)
    order = operations_pb2.TRANSFER_ORDER_OLDEST_FIRST if oldest_first else operations_pb2.TRANSFER_ORDER_NEWEST_FIRST
    request = operations_pb2.ListTransfersRequest(states=states, giver_province=giver_province,
                                                  receiver_province=receiver_province, order=order)
    if since is not None:
        request.created_from.CopyFrom(timestamp_of(parse_time(since, "--since")))
    if until is not None:
        request.created_to.CopyFrom(timestamp_of(parse_time(until, "--until")))
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn  # for this command only

    rows: list[transfers_pb2.TransferView] = []
    token = ""
    pages = 0
    with operations(ops) as stub, Progress(
            SpinnerColumn(), TextColumn("reading transfers: {task.completed} in {task.fields[pages]} pages"),
            TimeElapsedColumn(),
            console=err_console, transient=True, disable=not (every and err_console.is_terminal)) as progress:
        task = progress.add_task("transfers", total=None, pages=0)
        while every or len(rows) < limit:
            request.page_size = page_size if every else min(page_size, limit - len(rows))
            request.page_token = token
            page = stub.ListTransfers(request, timeout=TIMEOUT_S)
            rows += page.transfers
            pages += 1
            progress.update(task, advance=len(page.transfers), pages=pages)
            token = page.next_page_token
            if not token:
                break
    first = "oldest" if oldest_first else "newest"
    if as_json:
        print(json_text([as_dict(t) for t in rows], indent=None))
    else:
        # Ids are copied from here: folded, never cut short.
        table = Table(Column("transfer", overflow="fold"), "state", "from", "to", Column("giver", overflow="fold"),
                      Column("receiver", overflow="fold"), "amount", "created (Beijing)",
                      title=f"transfers, {first} first")
        for t in rows:
            add_row(table, t.transfer_id, transfer_state(t.state), t.giver_province, t.receiver_province,
                    t.giver_id_masked, t.receiver_id_masked, yuan(t.amount_fen), beijing_time(t, "created_at"))
        console.print(table)
    if every:
        err_console.print(f"{len(rows)} transfers in {pages} pages")
    elif token:  # on stderr, so that --json output stays one document
        err_console.print(f"more available: these are the {first} {len(rows)}; --limit N shows more, --all every one",
                          highlight=False)


_UNLESS = {transfers_pb2.TRANSFER_STATE_REJECTED: "delivered", transfers_pb2.TRANSFER_STATE_RETURNED: "confirmed"}


def _deadline(answer: operations_pb2.InspectTransferResponse) -> str:
    """When and how the transfer ends if nothing else happens first (the gateway's own deadline)."""
    if not answer.HasField("deadline"):
        return "final"
    end = answer.deadline
    return (f"{transfer_state(end.state)} at {beijing_time(end, 'at')} (Beijing) unless "
            f"{_UNLESS.get(end.state, 'answered')} before, reason {end.reason}")


def _message_kind(kind: operations_pb2.OutboxMessageKind.ValueType) -> str:
    return operations_pb2.OutboxMessageKind.Name(kind).removeprefix("OUTBOX_MESSAGE_KIND_")


def _message_status(status: operations_pb2.OutboxMessageStatus.ValueType) -> str:
    return operations_pb2.OutboxMessageStatus.Name(status).removeprefix("OUTBOX_MESSAGE_STATUS_")


def messages_table(messages: Sequence[operations_pb2.OutboxMessageView]) -> Table:
    """The messages owed to provinces about one transfer or binding: attempts, last error, next try."""
    table = Table("to", "message", "status", "attempts", "last error", "next attempt (Beijing)", "done (Beijing)",
                  title="messages to the provinces")
    for m in messages:
        add_row(table, m.destination, _message_kind(m.kind) + (f" {m.outcome}" if m.outcome else ""),
                _message_status(m.status), str(m.attempts), m.last_error or NONE, beijing_time(m, "next_attempt_at"),
                beijing_time(m, "done_at"))
    return table


@transfers_app.command("show")
def transfers_show(transfer_id: str, ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False) -> None:
    """One transfer: its history, the messages owed to the provinces about it (attempts, last error, next attempt)
    and when it ends if nothing else happens first (personal data masked)."""
    with operations(ops) as stub:
        answer = stub.InspectTransfer(operations_pb2.InspectTransferRequest(transfer_id=transfer_id),
                                      timeout=TIMEOUT_S)
    t = answer.transfer
    if as_json:  # the transfer's fields, then what the inspection adds
        print(json_text({**as_dict(t), "messages": [as_dict(m) for m in answer.messages],
                         **({"deadline": as_dict(answer.deadline)} if answer.HasField("deadline") else {})}))
        return
    console.print(Panel(field_grid([
        ("state", transfer_state(t.state) + (f" ({t.reason})" if t.reason else "")),
        ("from → to", f"{t.giver_province} → {t.receiver_province}"),
        ("giver", t.giver_id_masked), ("receiver", t.receiver_id_masked),
        ("amount", f"{yuan(t.amount_fen)} {t.currency} ({t.amount_fen} fen)"),
        ("created (Beijing)", beijing_time(t, "created_at")), ("updated (Beijing)", beijing_time(t, "updated_at")),
        ("ends", _deadline(answer)),
        ("settlement window", t.settlement_window_id or NONE),
        ("instruction sha256", t.instruction_sha256.hex()),
    ]), title=f"transfer {shown(t.transfer_id)}", expand=False))
    history = Table("#", "state", "at (Beijing)", "reason", title="history")
    for number, event in enumerate(t.history, 1):
        add_row(history, str(number), transfer_state(event.state), beijing_time(event, "at"), event.reason or NONE)
    console.print(history)
    console.print(messages_table(answer.messages))


@transfers_app.command("watch")
def transfers_watch(ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False,
                    cursor: Annotated[str, typer.Option(help="Resume after this cursor.")] = "",
                    count: Annotated[int, typer.Option(help="Stop after this many changes (0: never).")] = 0) -> None:
    """Every transfer state change as it happens (Ctrl-C stops)."""
    seen = 0
    with operations(ops) as stub:
        stream = stub.WatchTransfers(operations_pb2.WatchTransfersRequest(from_cursor=cursor))
        try:
            for change in stream:
                if as_json:
                    print(json_text(as_dict(change), indent=None), flush=True)
                else:
                    console.print(f"{shown(change.cursor):>8}  {shown(change.transfer_id)}  "
                                  f"{transfer_state(change.state):<10} "
                                  f"{shown(change.giver_province)}->{shown(change.receiver_province)}  "
                                  f"{yuan(change.amount_fen)} {shown(change.reason)}")
                seen += 1
                if count and seen >= count:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]
