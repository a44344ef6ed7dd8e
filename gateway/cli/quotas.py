"""`gongji quotas ...`: a binding's quota, its consumptions and the newest notices about it; the totals by province
pair (Q3-Q10). Read only: quotas change by the provinces' signed calls, and the clearing by `gongji settlement`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Column, Table

from gateway.addresses import DEFAULT_OPS_LISTEN
from gateway.cli.connection import TIMEOUT_S, AsJson, OpsAddress, operations
from gateway.cli.output import (
    add_row,
    beijing_time,
    console,
    err_console,
    field_grid,
    print_json,
    shown,
    yuan,
)
from gateway.cli.transfers import messages_table
from protos.gongji.v1 import common_pb2, operations_pb2, quotas_pb2, relations_pb2

quotas_app = typer.Typer(help="Quotas of the 2026 regime (Q1-Q13), read only: a binding's quota and its "
                              "consumptions, the totals by province pair.", no_args_is_help=True)


def _figures(quota: common_pb2.QuotaFigures) -> list[tuple[str, str]]:
    return [("granted", yuan(quota.granted_fen)), ("consumed", yuan(quota.consumed_fen)),
            ("released", yuan(quota.released_fen)), ("available", yuan(quota.available_fen))]


def _kind(value: quotas_pb2.ConsumptionKind.ValueType) -> str:
    return quotas_pb2.ConsumptionKind.Name(value).removeprefix("CONSUMPTION_KIND_")


def _state(value: quotas_pb2.ConsumptionState.ValueType) -> str:
    return quotas_pb2.ConsumptionState.Name(value).removeprefix("CONSUMPTION_STATE_")


@quotas_app.command("show")
def quotas_show(
    binding_id: str, ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False,
    page_size: Annotated[int, typer.Option(min=1, max=200, help="Consumptions shown, newest first.")] = 20,
    page_token: Annotated[str, typer.Option(help="From a previous answer's 'more available' line.")] = "",
) -> None:
    """A binding's quota: its figures and version, its consumptions newest first, its newest notices."""
    with operations(ops) as stub:
        answer = stub.InspectQuota(operations_pb2.InspectQuotaRequest(binding_id=binding_id, page_size=page_size,
                                                                      page_token=page_token), timeout=TIMEOUT_S)
    if as_json:
        print_json(answer)
        return
    b = answer.binding
    state = relations_pb2.BindingState.Name(b.state).removeprefix("BINDING_STATE_")
    console.print(Panel(field_grid([
        ("binding", f"{state} {b.giver_province} → {b.receiver_province}"),
        ("giver", b.giver_id_masked), ("receiver", b.receiver_id_masked),
        *_figures(answer.quota), ("version", f"{answer.version} changes"),
    ]), title=f"quota of binding {shown(b.binding_id)}", expand=False))
    table = Table(Column("consumption", overflow="fold"), Column("settlement ref", overflow="fold"), "kind", "drawn",
                  "reversed", "state", "month", "care area", "recorded (Beijing)", title="consumptions, newest first")
    for c in answer.consumptions:
        add_row(table, c.consumption_id, c.settlement_ref, _kind(c.kind), yuan(c.drawn_fen), yuan(c.reversed_fen),
                _state(c.state), c.clearing_window_id, c.care_pooling_area, beijing_time(c, "created_at"))
    console.print(table)
    console.print(messages_table(answer.messages))
    if answer.next_page_token:  # on stderr, so that the table stays the output
        err_console.print(f"more available: --page-token {shown(answer.next_page_token)}", highlight=False)


@quotas_app.command("stats")
def quotas_stats(ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False) -> None:
    """The quotas' totals by ordered province pair (givers' province → receivers'), from the running totals."""
    with operations(ops) as stub:
        answer = stub.GetStats(operations_pb2.GetStatsRequest(), timeout=TIMEOUT_S)
    if as_json:
        print_json(operations_pb2.GetStatsResponse(quota_pairs=answer.quota_pairs))
        return
    if not answer.quota_pairs:
        console.print("no quotas yet")
        return
    table = Table("from (givers)", "to (receivers)", "granted", "consumed", "released", "available", "consumptions",
                  title="quotas by province pair")
    for pair in answer.quota_pairs:
        t = pair.totals
        add_row(table, pair.giver_province, pair.receiver_province, yuan(t.granted_fen), yuan(t.consumed_fen),
                yuan(t.released_fen), yuan(t.available_fen), str(pair.consumption_count))
    console.print(table)
