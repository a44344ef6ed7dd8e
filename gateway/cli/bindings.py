"""`gongji bindings ...`: the family relations, read only: list by province and state, show one (masked IDs only)."""

from __future__ import annotations

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
    print_json,
    shown,
    yuan,
)
from gateway.cli.transfers import messages_table
from protos.gongji.v1 import operations_pb2, relations_pb2

bindings_app = typer.Typer(help="Bindings between givers and receivers, read only (masked ID numbers only).",
                           no_args_is_help=True)


def _binding_state(value: relations_pb2.BindingState.ValueType) -> str:
    return relations_pb2.BindingState.Name(value).removeprefix("BINDING_STATE_")


def _binding_states(names: list[str] | None) -> list[relations_pb2.BindingState.ValueType]:
    try:
        return [relations_pb2.BindingState.Value(f"BINDING_STATE_{s.upper()}") for s in names or []]
    except ValueError:
        fail(f"unknown binding state in {names}: PROPOSED, ACTIVE, SUSPENDED, REFUSED, EXPIRED or DISSOLVED", 2)


def _amount(fen: int) -> str:
    return yuan(fen) if fen else "none"


@bindings_app.command("list")
def bindings_list(
    ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False,
    province: Annotated[str, typer.Option(help="Only bindings with this province on either side.")] = "",
    state: Annotated[list[str] | None, typer.Option(help="e.g. ACTIVE (repeatable).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (ignored with --all).")] = 100,
    every: Annotated[bool, typer.Option("--all", help="Every matching binding, page after page.")] = False,
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Bindings per request.")] = 1000,
) -> None:
    """Bindings, newest first (personal data masked); a line on stderr says when more match than are shown."""
    request = operations_pb2.ListBindingsRequest(province=province, states=_binding_states(state))
    rows: list[relations_pb2.BindingView] = []
    token = ""
    with operations(ops) as stub:
        while every or len(rows) < limit:
            request.page_size = page_size if every else min(page_size, limit - len(rows))
            request.page_token = token
            page = stub.ListBindings(request, timeout=TIMEOUT_S)
            rows += page.bindings
            token = page.next_page_token
            if not token:
                break
    if as_json:
        print(json_text([as_dict(b) for b in rows], indent=None))
    else:
        table = Table(Column("binding", overflow="fold"), "state", "from", "to", Column("giver", overflow="fold"),
                      Column("receiver", overflow="fold"), "relation", "authorised", "used", "created (Beijing)",
                      title="bindings, newest first")
        for b in rows:
            add_row(table, b.binding_id, _binding_state(b.state), b.giver_province, b.receiver_province,
                    b.giver_id_masked, b.receiver_id_masked, b.relation_code, _amount(b.authorised_amount_fen),
                    yuan(b.used_amount_fen), beijing_time(b, "created_at"))
        console.print(table)
    if every:
        err_console.print(f"{len(rows)} bindings")
    elif token:  # on stderr, so that --json output stays one document
        err_console.print(f"more available: these are the newest {len(rows)}; --limit N shows more, --all every one",
                          highlight=False)


@bindings_app.command("show")
def bindings_show(binding_id: str, ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False) -> None:
    """One binding: its state, parties (masked), amounts, consent and the messages owed to the provinces about it."""
    with operations(ops) as stub:
        answer = stub.InspectBinding(operations_pb2.InspectBindingRequest(binding_id=binding_id), timeout=TIMEOUT_S)
    if as_json:
        print_json(answer)
        return
    b = answer.binding
    method = relations_pb2.AttestationMethod.Name(b.attestation_method).removeprefix("ATTESTATION_METHOD_")
    console.print(Panel(field_grid([
        ("state", _binding_state(b.state) + (f" ({b.reason})" if b.reason else "")),
        ("from → to", f"{b.giver_province} → {b.receiver_province}"),
        ("giver", b.giver_id_masked), ("receiver", b.receiver_id_masked),
        ("relation", f"{b.relation_code} (the receiver's relation to the giver, GB/T 4761)"),
        ("authorised", _amount(b.authorised_amount_fen)), ("used", yuan(b.used_amount_fen)),
        ("consent by (Beijing)", beijing_time(answer, "consent_by")),
        ("attested (Beijing)", f"{beijing_time(answer, 'attested_at')} by {method}"
         if answer.HasField("attested_at") else NONE),
        ("created (Beijing)", beijing_time(b, "created_at")), ("updated (Beijing)", beijing_time(b, "updated_at")),
    ]), title=f"binding {shown(b.binding_id)}", expand=False))
    console.print(messages_table(answer.messages))
