"""`gongji settlement ...`: close, show, ack-status, record-payment and export settlement windows (D16-D18), the
quota regime's clearing months ("QYYYY-MM", Q10) among them."""

from __future__ import annotations

import csv
import enum
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gateway.addresses import DEFAULT_OPS_LISTEN
from gateway.cli.connection import TIMEOUT_S, AsJson, OpsAddress, operations
from gateway.cli.output import (
    NONE,
    add_row,
    as_dict,
    beijing_time,
    console,
    csv_text,
    err_console,
    fail,
    field_grid,
    json_text,
    plain_yuan,
    print_json,
    shown,
    yuan,
)
from protos.gongji.v1 import operations_pb2, operations_pb2_grpc, settlements_pb2

settlement_app = typer.Typer(help="Settlement windows between provincial funds (D16-D18).", no_args_is_help=True)
WINDOW_STATE_PREFIX = "SETTLEMENT_WINDOW_STATE_"
Window = operations_pb2.SettlementWindow


def _window_state(value: settlements_pb2.SettlementWindowState.ValueType) -> str:
    return settlements_pb2.SettlementWindowState.Name(value).removeprefix(WINDOW_STATE_PREFIX)


def _payment_of(window: Window, from_province: str, to_province: str) -> operations_pb2.PaymentRecord | None:
    return next((p for p in window.payments if (p.from_province, p.to_province) == (from_province, to_province)),
                None)


def _is_clearing(window: Window) -> bool:
    # A client of the contract, not of the gateway's domain: a clearing month's id is "QYYYY-MM" (operations.proto).
    return window.window_id.startswith("Q")


def _payable(window: Window) -> int:
    """How many payments the window needs: one per transfers' pair, one per clearing line whose net is not 0."""
    return len(window.pairs) + sum(1 for line in window.lines if line.net_fen)


def _acknowledged(window: Window) -> str:
    return f"{len(set(window.acknowledged_by) & set(window.provinces))}/{len(window.provinces)}"


def _print_window(w: Window) -> None:
    """A window: when, its state, who agreed, the gross figure per pair and each province's net position."""
    closed = w.state != settlements_pb2.SETTLEMENT_WINDOW_STATE_OPEN
    clearing = _is_clearing(w)
    console.print(Panel(field_grid([
        ("state", _window_state(w.state)),
        ("period (Beijing)", f"{beijing_time(w, 'opens_at')} – {beijing_time(w, 'closes_at')}"),
        ("closed (Beijing)", beijing_time(w, "closed_at")),
        ("acknowledged", f"{_acknowledged(w)} provinces" if closed else NONE),
        ("paid", f"{len(w.payments)}/{_payable(w)} pairs" if closed else NONE),
    ]), title=f"{'clearing month' if clearing else 'settlement window'} {shown(w.window_id)}", expand=False))
    if not closed:
        console.print("open: the figures are frozen when the window is closed")
        return
    if w.lines:
        _print_lines(w)
    elif clearing:
        console.print("no consumptions or reversals in this month: nothing to acknowledge or pay")
        return
    elif not w.pairs:
        console.print("no committed transfers in this window: nothing to acknowledge or pay")
        return
    else:
        pairs = Table("from (pays)", "to (is paid)", "gross", "transfers", "paid", title="gross figures by pair")
        for pair in w.pairs:
            paid = _payment_of(w, pair.from_province, pair.to_province)
            add_row(pairs, pair.from_province, pair.to_province, yuan(pair.gross_fen), str(pair.transfer_count),
                    f"{paid.bank} {paid.serial_number} {paid.date}" if paid else "no")
        console.print(pairs)
    positions = Table("province", "net", "", "acknowledged", title="net positions")
    for position in w.positions:
        side = "receives" if position.net_fen > 0 else "pays" if position.net_fen < 0 else "even"
        add_row(positions, position.province, yuan(position.net_fen), side,
                "yes" if position.province in w.acknowledged_by else "no")
    console.print(positions)


def _print_lines(w: Window) -> None:
    """A clearing month's lines: what the givers' province's fund owes the receivers' (a negative net: the other
    way round); a payment names the line's pair whichever way its money goes."""
    lines = Table("from (givers)", "to (receivers)", "consumed", "reversed", "net", "consumptions", "reversals",
                  "paid", title="clearing lines by pair (net: from owes to; negative: to owes from)")
    for line in w.lines:
        paid = _payment_of(w, line.from_province, line.to_province)
        add_row(lines, line.from_province, line.to_province, yuan(line.consumed_fen), yuan(line.reversed_fen),
                yuan(line.net_fen), str(line.consumption_count), str(line.reversal_count),
                f"{paid.bank} {paid.serial_number} {paid.date}" if paid else "no" if line.net_fen else "nothing to pay")
    console.print(lines)


def _get_window(stub: operations_pb2_grpc.OperationsStub, window_id: str) -> Window:
    return stub.GetSettlementWindow(operations_pb2.GetSettlementWindowRequest(window_id=window_id),
                                    timeout=TIMEOUT_S).window


@settlement_app.command("close")
def settlement_close(
    window_id: Annotated[str, typer.Argument(help="YYYY-MM-DD (daily windows), YYYY-MM (monthly), or QYYYY-MM (a "
                                                  "quota clearing month).", show_default=False)] = "",
    current: Annotated[bool, typer.Option("--current", help="The window of now (Beijing calendar), instead of an "
                                                            "id.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Close it even if nothing is committed in it (it is then "
                                                        "SETTLED at once).")] = False,
    ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False,
) -> None:
    """Freeze a window's figures and send each province its part to acknowledge (closing twice changes nothing).

    A window that has not started is refused, and so is one with nothing committed unless --force. Windows and
    clearing months (QYYYY-MM) are also closed on schedule, a delay after they end
    (GONGJI_SETTLEMENT_CLOSE_DELAY_SECONDS); a clearing month closed early sends the consumptions and reversals
    recorded later to the next month.
    """
    if bool(window_id) == current:
        fail("name the window to close: a window id (YYYY-MM-DD or YYYY-MM) or --current, not both; a clearing "
             "month: QYYYY-MM", 2)
    with operations(ops) as stub, err_console.status("closing the settlement window…"):
        window = stub.CloseSettlementWindow(operations_pb2.CloseSettlementWindowRequest(window_id=window_id,
                                                                                        force=force),
                                            timeout=TIMEOUT_S).window
    if as_json:
        print_json(window)
        return
    _print_window(window)


@settlement_app.command("show")
def settlement_show(
    window_id: Annotated[str, typer.Argument(help="YYYY-MM-DD, YYYY-MM or QYYYY-MM; empty: the newest windows.")] = "",
    ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Without a window id: this many, newest first.")] = 10,
    state: Annotated[list[str] | None, typer.Option(help="Without a window id: only windows in this state, "
                                                         "e.g. CLOSED (repeatable).")] = None,
    kind: Annotated[WindowKind | None, typer.Option(help="Without a window id: only the transfers' windows or only "
                                                         "the quota clearing months.")] = None,
) -> None:
    """One window in full, or the newest windows at a glance."""
    if window_id:
        with operations(ops) as stub:
            window = _get_window(stub, window_id)
        if as_json:
            print_json(window)
        else:
            _print_window(window)
        return
    try:
        states = [settlements_pb2.SettlementWindowState.Value(WINDOW_STATE_PREFIX + s.upper()) for s in state or []]
    except ValueError:
        fail(f"unknown window state in {state}", 2)
    with operations(ops) as stub:
        answer = stub.ListSettlementWindows(operations_pb2.ListSettlementWindowsRequest(
            states=states, page_size=limit, kind=KINDS[kind]), timeout=TIMEOUT_S)
    if as_json:
        print_json(operations_pb2.ListSettlementWindowsResponse(windows=answer.windows))
        return
    if not answer.windows:
        console.print("no settlement windows yet")
        return
    table = Table("window", "state", "provinces", "total gross (net)", "transfers (consumptions)", "acknowledged",
                  "paid pairs", title="settlement windows and clearing months, newest first")
    for w in answer.windows:
        closed = w.state != settlements_pb2.SETTLEMENT_WINDOW_STATE_OPEN
        total = sum(p.gross_fen for p in w.pairs) + sum(line.net_fen for line in w.lines)
        count = sum(p.transfer_count for p in w.pairs) + sum(line.consumption_count for line in w.lines)
        add_row(table, w.window_id, _window_state(w.state), ", ".join(w.provinces) or NONE,
                yuan(total) if closed else NONE, str(count) if closed else NONE,
                _acknowledged(w) if closed else NONE, f"{len(w.payments)}/{_payable(w)}" if closed else NONE)
    console.print(table)


@settlement_app.command("ack-status")
def settlement_ack_status(window_id: str, ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False) -> None:
    """Which provinces of a closed window have acknowledged its figures."""
    with operations(ops) as stub:
        window = _get_window(stub, window_id)
    status = [(code, code in window.acknowledged_by) for code in window.provinces]
    if as_json:
        print(json_text({"window_id": window.window_id,
                         "state": settlements_pb2.SettlementWindowState.Name(window.state),
                         "provinces": [{"province": code, "acknowledged": done} for code, done in status]}))
        return
    if window.state == settlements_pb2.SETTLEMENT_WINDOW_STATE_OPEN:
        console.print(f"window {shown(window.window_id)} is OPEN: there is nothing to acknowledge until it is closed")
        return
    table = Table("province", "acknowledged", title=f"window {shown(window.window_id)}")
    for code, done in status:
        add_row(table, code, Text("yes", style="green") if done else Text("no", style="red"))
    console.print(table)
    console.print(f"{sum(done for _, done in status)} of {len(status)} provinces acknowledged; "
                  f"the window is {_window_state(window.state)}")


@settlement_app.command("record-payment")
def settlement_record_payment(
    window_id: str,
    from_province: Annotated[str, typer.Option("--from", help="The paying province, e.g. 650000 (a clearing line: "
                                                              "its givers' province).")],
    to_province: Annotated[str, typer.Option("--to", help="The paid province, e.g. 620000 (a clearing line: its "
                                                          "receivers' province).")],
    bank: Annotated[str, typer.Option(help="The bank's code, e.g. ICBC or its 12-digit CNAPS number.")],
    serial: Annotated[str, typer.Option(help="The bank's serial number of the payment.")],
    date: Annotated[str, typer.Option(help="The payment's date, YYYY-MM-DD.")],
    ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False,
) -> None:
    """Record the bank payment of one pair of an acknowledged window (D18); SETTLED once every pair is paid.

    A clearing month's payment names its line (--from the givers' province --to the receivers'), whichever way the
    money went: a line with a negative net is paid by the receivers' province. A line netting to 0 needs none.
    """
    payment = operations_pb2.PaymentRecord(from_province=from_province, to_province=to_province, bank=bank,
                                           serial_number=serial, date=date)
    with operations(ops) as stub:
        window = stub.RecordSettlementPayment(operations_pb2.RecordSettlementPaymentRequest(
            window_id=window_id, payments=[payment]), timeout=TIMEOUT_S).window
    if as_json:
        print_json(window)
        return
    console.print(f"window {shown(window.window_id)}: payment {shown(from_province)} → {shown(to_province)} "
                  f"recorded ({shown(bank)} {shown(serial)} {shown(date)}); {len(window.payments)}/{_payable(window)} "
                  "pairs paid; "
                  f"the window is {_window_state(window.state)}")


class WindowKind(enum.StrEnum):
    transfers = "transfers"
    clearing = "clearing"


KINDS = {None: operations_pb2.SETTLEMENT_WINDOW_KIND_UNSPECIFIED,
         WindowKind.transfers: operations_pb2.SETTLEMENT_WINDOW_KIND_TRANSFERS,
         WindowKind.clearing: operations_pb2.SETTLEMENT_WINDOW_KIND_CLEARING}


class ExportFormat(enum.StrEnum):
    csv = "csv"
    json = "json"


CSV_COLUMNS = ("window_id", "state", "from_province", "to_province", "gross_fen", "gross_yuan", "transfer_count",
               "paid_bank", "paid_serial_number", "paid_date")


CLEARING_CSV_COLUMNS = ("window_id", "state", "from_province", "to_province", "consumed_fen", "reversed_fen",
                        "net_fen", "net_yuan", "consumption_count", "reversal_count", "paid_bank",
                        "paid_serial_number", "paid_date")


def _csv_row(window: Window, from_province: str, to_province: str, figures: list[int | str]) -> list[object]:
    """One pair's row: its text cells neutralised, its numbers written as they are (to stay numbers), its payment."""
    paid = _payment_of(window, from_province, to_province)
    text = [csv_text(value) for value in (window.window_id, _window_state(window.state), from_province, to_province)]
    payment = [csv_text(value) for value in (paid.bank, paid.serial_number, paid.date)] if paid else ["", "", ""]
    return [*text, *figures, *payment]


def write_csv(window: Window, out: IO[str]) -> None:
    writer = csv.writer(out)
    if _is_clearing(window):
        writer.writerow(CLEARING_CSV_COLUMNS)
        writer.writerows(_csv_row(window, line.from_province, line.to_province,
                                  [line.consumed_fen, line.reversed_fen, line.net_fen, plain_yuan(line.net_fen),
                                   line.consumption_count, line.reversal_count]) for line in window.lines)
    else:
        writer.writerow(CSV_COLUMNS)
        writer.writerows(_csv_row(window, pair.from_province, pair.to_province,
                                  [pair.gross_fen, plain_yuan(pair.gross_fen), pair.transfer_count])
                         for pair in window.pairs)


EXPORT_HELP = (
    "A window's report for the funds' accountants.\n\n"
    "CSV: a header row, then one row per province pair with the columns window_id, state, from_province (pays), "
    "to_province (is paid), gross_fen, gross_yuan (e.g. 1234.56), transfer_count, and paid_bank, "
    "paid_serial_number, paid_date once that pair's payment is recorded (empty before). Net positions are not in "
    "the CSV (a province's is what it receives minus what it pays over the pairs).\n\n"
    "A clearing month (QYYYY-MM): one row per line with the columns window_id, state, from_province (the givers'), "
    "to_province (the receivers'), consumed_fen, reversed_fen, net_fen, net_yuan (negative: to_province pays "
    "from_province), consumption_count, reversal_count, and paid_bank, paid_serial_number, paid_date.\n\n"
    "JSON: the whole window as the gateway answers it: pairs, net positions, acknowledgements and payments.\n\n"
    "Amounts in fen are exact integers."
)


@settlement_app.command("export", help=EXPORT_HELP)
def settlement_export(
    window_id: str,
    output_format: Annotated[ExportFormat, typer.Option("--format", help="csv or json.")] = ExportFormat.csv,
    output: Annotated[Path | None, typer.Option(dir_okay=False, help="Write here instead of stdout.")] = None,
    ops: OpsAddress = DEFAULT_OPS_LISTEN,
) -> None:
    with operations(ops) as stub:
        window = _get_window(stub, window_id)
    try:
        with (open(output, "w", encoding="utf-8", newline="") if output else _stdout()) as out:
            if output_format is ExportFormat.csv:
                write_csv(window, out)
            else:
                out.write(json_text(as_dict(window)) + "\n")
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror or error}")
    if output:
        err_console.print(f"wrote window {shown(window.window_id)} ({len(window.pairs) + len(window.lines)} pairs, "
                          f"{_window_state(window.state)}) to {shown(output)}", highlight=False)


@contextmanager
def _stdout() -> Iterator[IO[str]]:
    """stdout for the export, left open."""
    yield sys.stdout
