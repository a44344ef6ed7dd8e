"""`gongji`: the operators' command line, a client of the Operations service (typer + rich)."""

from __future__ import annotations

import base64
import binascii
import csv
import enum
import json
import os
import re
import sys
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Annotated, Any, NoReturn

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from gateway.admin import add_admin_commands
from protos.gongji.v1 import operations_pb2, operations_pb2_grpc, settlements_pb2, transfers_pb2

app = typer.Typer(help="Operate the Gongji exchange: provinces, transfers, settlement, stats, the database schema.",
                  no_args_is_help=True)
provinces_app = typer.Typer(help="The routing table.", no_args_is_help=True)
transfers_app = typer.Typer(help="Transfers.", no_args_is_help=True)
settlement_app = typer.Typer(help="Settlement windows between provincial funds (D16-D18).", no_args_is_help=True)
app.add_typer(provinces_app, name="provinces")
app.add_typer(transfers_app, name="transfers")
app.add_typer(settlement_app, name="settlement")
# `db`: the only commands that open the database rather than call the gateway (gateway/admin.py).
add_admin_commands(app)
# No emoji codes: a value such as ":warning:" from the gateway is printed as written.
console = Console(emoji=False)
# Errors and progress go to stderr, so that stdout holds only the answer (JSON or CSV for scripts).
err_console = Console(stderr=True, emoji=False)

OpsAddress = Annotated[str, typer.Option("--ops", envvar="GONGJI_OPS", help="The gateway's operators' port.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TIMEOUT_S = 10.0
# Windows, daily limits and returns are in Beijing time (China has no daylight saving time).
BEIJING = timezone(timedelta(hours=8), "Beijing")
NONE = "—"
WINDOW_STATE_PREFIX = "SETTLEMENT_WINDOW_STATE_"


# The gateway's certificate names it so (see gateway/security/tls.py).
GATEWAY_TLS_NAME = "gateway.gongji"


def _channel(address: str) -> grpc.Channel:
    """Mutual TLS as an operator when a certificate folder is there (GONGJI_TLS_DIR, default `make run`'s
    var/tls with operator-<GONGJI_OPERATOR>.crt/.key and ca.crt); plaintext otherwise (development)."""
    folder = Path(os.environ.get("GONGJI_TLS_DIR", "var/tls"))
    name = f"operator-{os.environ.get('GONGJI_OPERATOR', 'operator')}"
    if os.environ.get("GONGJI_INSECURE_DEV_PLAINTEXT", "").lower() == "true" or not (folder / "ca.crt").exists():
        return grpc.insecure_channel(address)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=(folder / "ca.crt").read_bytes(),
                                                   private_key=(folder / f"{name}.key").read_bytes(),
                                                   certificate_chain=(folder / f"{name}.crt").read_bytes())
    except OSError as error:
        fail(f"cannot read the operator's certificate in {folder}: {error.strerror} ({error.filename})")
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", GATEWAY_TLS_NAME)])


# Characters that steer a terminal or reorder what it shows: C0 and C1 controls and DEL (ESC starts the
# terminal's control sequences), format characters (bidi overrides and isolates, zero-width ones), line
# and paragraph separators; and lone surrogates, which no terminal encoding can write. Values from the
# gateway show them as escapes instead.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NOT_PLAIN_ASCII = re.compile(r"[^\x20-\x7e]")
_NOT_ASCII = re.compile(r"[^\x00-\x7e]")


def _is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _visible_escape(match: re.Match[str]) -> str:
    char = match.group()
    if not _is_unsafe(char):
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(value: object) -> str:
    """A value from the gateway with its control and format characters written as escapes (ESC as \\x1b)."""
    return _NOT_PLAIN_ASCII.sub(_visible_escape, str(value))


def shown(value: object) -> str:
    """A value from the gateway to put in a line of rich markup: `visible`, and its markup escaped, so that
    `[bold]` prints as written."""
    return escape(visible(value))


def _json_escape(match: re.Match[str]) -> str:
    char = match.group()
    if not _is_unsafe(char):
        return char
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    high, low = divmod(code - 0x10000, 0x400)  # a UTF-16 surrogate pair, as JSON writes such characters
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"


def json_text(value: Any, indent: int | None = 2) -> str:
    """JSON for stdout: readable Chinese, but no character that steers a terminal. json.dumps escapes the
    C0 controls inside strings; DEL, C1 controls, format characters and separators are escaped here too
    (they occur only inside strings, so the JSON stays valid and means the same)."""
    return _NOT_ASCII.sub(_json_escape, json.dumps(value, ensure_ascii=False, indent=indent))


# OWASP CSV injection: a spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell of a CSV export, a leading quote added where a spreadsheet would see a formula. Only
    text cells: the numbers the export writes stay numbers."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


@contextmanager
def operations(address: str) -> Iterator[operations_pb2_grpc.OperationsStub]:
    """A client for one command; expected failures become a one-line message and exit code 1."""
    with _channel(address) as channel:
        try:
            yield operations_pb2_grpc.OperationsStub(channel)
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            reason = ""
            for detail in status.details if status else ():
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason = f" {info.reason}"
            err_console.print(f"[red]error:[/red] {error.code().name}{shown(reason)}: {shown(error.details())}",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None


def fail(message: str, code: int = 1) -> NoReturn:
    """A failure found by the CLI itself, printed like the gateway's: one line, no traceback."""
    err_console.print(f"[red]error:[/red] {shown(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _json(message: Message) -> None:
    print(json_text(_dict(message)))


def yuan(fen: int) -> str:
    """Fen as yuan for people: ¥1,234.56 (exact: integer arithmetic, never a float)."""
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}¥{whole:,}.{cents:02d}"


def plain_yuan(fen: int) -> str:
    """Fen as yuan for files: 1234.56."""
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}{whole}.{cents:02d}"


def _when(message: Message, field: str) -> str:
    """A timestamp field in Beijing time, or a dash when unset."""
    if not message.HasField(field):
        return NONE
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def _state(value: transfers_pb2.TransferState.ValueType) -> str:
    return transfers_pb2.TransferState.Name(value).removeprefix("TRANSFER_STATE_")


def _status(value: operations_pb2.ProvinceStatus.ValueType) -> str:
    return operations_pb2.ProvinceStatus.Name(value).removeprefix("PROVINCE_STATUS_")


def _window_state(value: settlements_pb2.SettlementWindowState.ValueType) -> str:
    return settlements_pb2.SettlementWindowState.Name(value).removeprefix(WINDOW_STATE_PREFIX)


def _fields(rows: list[tuple[str, str]]) -> Table:
    """Named values, one a line; each value printed as it is (see `visible`), never read as markup."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in rows:
        grid.add_row(name, Text(visible(value)))
    return grid


def _row(table: Table, *cells: str | Text) -> None:
    """A table row: str cells printed as they are (see `visible`), never read as markup; Text cells carry the
    CLI's own styles."""
    table.add_row(*(Text(visible(cell)) if isinstance(cell, str) else cell for cell in cells))


# -- provinces ------------------------------------------------------------------------------------


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
        _row(table, p.code, p.name, p.endpoint, _status(p.status), ", ".join(k.key_id for k in p.keys))
    console.print(table)


POLICY_FIELDS = (  # (field of ProvincePolicy, what it means)
    ("single_relation_only", "D8: one relation at a time"),
    ("daily_transfer_limit", "D12: transfers per giver per Beijing day"),
    ("max_transfer_fen", "D12: largest single transfer"),
    ("blackout_start_minute", "D12: no submissions from (Beijing)"),
    ("blackout_end_minute", "D12: ... until (Beijing)"),
    ("return_hour", "D13: unconfirmed transfers return at (Beijing, next day)"),
    ("delivery_deadline_seconds", "delivery attempts stop after (seconds)"),
)


def _policy_value(policy: Message, field: str) -> str:
    if not policy.HasField(field):
        return "national default"
    value = getattr(policy, field)
    if field == "max_transfer_fen":
        return f"{yuan(value)} ({value} fen)"
    if field.endswith("_minute"):
        return f"{value // 60:02d}:{value % 60:02d} ({value})"
    if field == "return_hour":
        return f"{value:02d}:00"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _key_validity(key: operations_pb2.ProvinceKey, now: datetime) -> str:
    if key.HasField("valid_until") and key.valid_until.ToDatetime(tzinfo=UTC) <= now:
        return "retired"
    if key.HasField("valid_from") and key.valid_from.ToDatetime(tzinfo=UTC) > now:
        return "not yet valid"
    return "valid"


def _print_province(p: operations_pb2.Province) -> None:
    console.print(Panel(_fields([("code", p.code), ("name", p.name), ("endpoint", p.endpoint),
                                 ("status", _status(p.status)), ("updated (Beijing)", _when(p, "updated_at"))]),
                        title=f"province {shown(p.code)}", expand=False))
    policy = Table("policy", "value", "meaning", title="policy")
    for field, meaning in POLICY_FIELDS:
        _row(policy, field, _policy_value(p.policy, field), meaning)
    console.print(policy)
    now = datetime.now(UTC)
    keys = Table("key id", "alg", Column("public key (hex)", overflow="fold"), "valid from (Beijing)",
                 "valid until (Beijing)", "now", title="signing keys")
    for k in p.keys:
        _row(keys, k.key_id, k.alg, k.public_key.hex(), _when(k, "valid_from"), _when(k, "valid_until"),
             _key_validity(k, now))
    console.print(keys)


@provinces_app.command("show")
def provinces_show(code: str, ops: OpsAddress = "127.0.0.1:50052", as_json: AsJson = False) -> None:
    """One province: its endpoint, status, policy and signing keys with their validity."""
    with operations(ops) as stub:
        answer = stub.ListProvinces(operations_pb2.ListProvincesRequest(), timeout=TIMEOUT_S)
    province = next((p for p in answer.provinces if p.code == code), None)
    if province is None:
        fail(f"NOT_FOUND PROVINCE_NOT_FOUND: no province {code} in the routing table")
    if as_json:
        _json(province)
        return
    _print_province(province)


# RFC 8410: an Ed25519 SubjectPublicKeyInfo in DER is this fixed prefix and the raw 32-byte key. Parsed here
# with the standard library because only gateway.security may use `cryptography` (tests/test_architecture.py).
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
PEM_PUBLIC_KEY = re.compile(rb"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", re.DOTALL)


def load_public_key(path: Path) -> bytes:
    """The raw 32-byte Ed25519 public key of a file: raw bytes, hex text (the `.pub` files the gateway
    and the stub provinces write), or a PEM / DER SubjectPublicKeyInfo."""
    if path.suffix == ".key":
        fail(f"{path} looks like a private key file: give the public key (the .pub file beside it)", 2)
    data = path.read_bytes()
    pem = PEM_PUBLIC_KEY.search(data)
    if pem is None and len(data) == 32:
        return data
    if pem is None:
        try:
            raw = bytes.fromhex(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raw = b""
        if len(raw) == 32:
            return raw
    try:
        der = base64.b64decode(b"".join(pem.group(1).split()), validate=True) if pem else data
    except binascii.Error:
        der = b""
    if len(der) == len(ED25519_SPKI_PREFIX) + 32 and der.startswith(ED25519_SPKI_PREFIX):
        return der[len(ED25519_SPKI_PREFIX):]
    fail(f"{path}: not an Ed25519 public key (raw 32 bytes, hex, or a PEM/DER SubjectPublicKeyInfo)", 2)


PolicyInt = Annotated[int | None, typer.Option(min=0, help="Unset: the national default.")]


@provinces_app.command("register")
def provinces_register(
    code: Annotated[str, typer.Option(help="Six-digit province code, e.g. 610000.")],
    name: Annotated[str, typer.Option(help="Display name, e.g. 陕西.")],
    endpoint: Annotated[str, typer.Option(help="host:port of the province's ProvinceInbox.")],
    key_id: Annotated[str, typer.Option(help="Its signing key's id, e.g. 610000-k1.")],
    public_key: Annotated[Path, typer.Option(
        exists=True, dir_okay=False, readable=True,
        help="Ed25519 public key file: raw 32 bytes, hex text (like var/keys/*.pub), or PEM/DER.")],
    policy_single_relation_only: Annotated[bool | None, typer.Option(
        "--policy-single-relation-only/--policy-multiple-relations", help="D8. Unset: the national default.")] = None,
    policy_daily_transfer_limit: PolicyInt = None,
    policy_max_transfer_fen: PolicyInt = None,
    policy_blackout_start_minute: PolicyInt = None,
    policy_blackout_end_minute: PolicyInt = None,
    policy_return_hour: PolicyInt = None,
    policy_delivery_deadline_seconds: PolicyInt = None,
    ops: OpsAddress = "127.0.0.1:50052",
    as_json: AsJson = False,
) -> None:
    """Add a province to the routing table (ACTIVE, its key valid from now)."""
    given = {"single_relation_only": policy_single_relation_only,
             "daily_transfer_limit": policy_daily_transfer_limit, "max_transfer_fen": policy_max_transfer_fen,
             "blackout_start_minute": policy_blackout_start_minute,
             "blackout_end_minute": policy_blackout_end_minute, "return_hour": policy_return_hour,
             "delivery_deadline_seconds": policy_delivery_deadline_seconds}
    policy = operations_pb2.ProvincePolicy()
    for field, value in given.items():
        if value is not None:
            setattr(policy, field, value)
    key = operations_pb2.ProvinceKey(key_id=key_id, alg="ed25519", public_key=load_public_key(public_key))
    request = operations_pb2.RegisterProvinceRequest(province=operations_pb2.Province(
        code=code, name=name, endpoint=endpoint, keys=[key], policy=policy))
    with operations(ops) as stub:
        answer = stub.RegisterProvince(request, timeout=TIMEOUT_S)
    if as_json:
        _json(answer.province)
        return
    console.print(f"registered province {shown(answer.province.code)} ({shown(answer.province.name)}), "
                  f"{_status(answer.province.status)}")
    _print_province(answer.province)


def _set_status(ops: str, code: str, status: operations_pb2.ProvinceStatus.ValueType) -> None:
    with operations(ops) as stub:
        answer = stub.UpdateProvince(operations_pb2.UpdateProvinceRequest(code=code, status=status),
                                     timeout=TIMEOUT_S)
    console.print(f"province {shown(answer.province.code)} is now {_status(answer.province.status)}")


@provinces_app.command("suspend")
def provinces_suspend(code: str, ops: OpsAddress = "127.0.0.1:50052") -> None:
    """Suspend a province: it can neither submit nor receive until resumed."""
    _set_status(ops, code, operations_pb2.PROVINCE_STATUS_SUSPENDED)


@provinces_app.command("resume")
def provinces_resume(code: str, ops: OpsAddress = "127.0.0.1:50052") -> None:
    """Make a suspended province active again."""
    _set_status(ops, code, operations_pb2.PROVINCE_STATUS_ACTIVE)


# -- transfers ------------------------------------------------------------------------------------


def _transfer_states(names: list[str] | None) -> list[transfers_pb2.TransferState.ValueType]:
    try:
        return [transfers_pb2.TransferState.Value(f"TRANSFER_STATE_{s.upper()}") for s in names or []]
    except ValueError:
        fail(f"unknown state in {names}", 2)


@transfers_app.command("list")
def transfers_list(
    ops: OpsAddress = "127.0.0.1:50052", as_json: AsJson = False,
    state: Annotated[list[str] | None, typer.Option(help="e.g. COMMITTED (repeatable)")] = None,
    giver_province: Annotated[str, typer.Option("--from", help="Only from this province.")] = "",
    receiver_province: Annotated[str, typer.Option("--to", help="Only to this province.")] = "",
    limit: Annotated[int, typer.Option(min=1, help="At most this many (ignored with --all).")] = 100,
    every: Annotated[bool, typer.Option("--all", help="Every matching transfer, page after page.")] = False,
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Transfers per request.")] = 1000,
) -> None:
    """Transfers, oldest first (personal data masked)."""
    states = _transfer_states(state)
    rows: list[transfers_pb2.TransferView] = []
    token = ""
    pages = 0
    with operations(ops) as stub, Progress(
            SpinnerColumn(), TextColumn("reading transfers: {task.completed} in {task.fields[pages]} pages"),
            TimeElapsedColumn(),
            console=err_console, transient=True, disable=not (every and err_console.is_terminal)) as progress:
        task = progress.add_task("transfers", total=None, pages=0)
        while every or len(rows) < limit:
            size = page_size if every else min(page_size, limit - len(rows))
            page = stub.ListTransfers(operations_pb2.ListTransfersRequest(
                states=states, giver_province=giver_province, receiver_province=receiver_province,
                page_size=size, page_token=token), timeout=TIMEOUT_S)
            rows += page.transfers
            pages += 1
            progress.update(task, advance=len(page.transfers), pages=pages)
            token = page.next_page_token
            if not token:
                break
    if as_json:
        print(json_text([_dict(t) for t in rows], indent=None))
        return
    # Ids are copied from here: folded, never cut short.
    table = Table(Column("transfer", overflow="fold"), "state", "from", "to", Column("giver", overflow="fold"),
                  Column("receiver", overflow="fold"), "amount", "created (Beijing)")
    for t in rows:
        _row(table, t.transfer_id, _state(t.state), t.giver_province, t.receiver_province, t.giver_id_masked,
             t.receiver_id_masked, yuan(t.amount_fen), _when(t, "created_at"))
    console.print(table)
    if every:
        err_console.print(f"{len(rows)} transfers in {pages} pages")


@transfers_app.command("show")
def transfers_show(transfer_id: str, ops: OpsAddress = "127.0.0.1:50052", as_json: AsJson = False) -> None:
    """One transfer with its whole history (personal data masked)."""
    with operations(ops) as stub:
        t = stub.InspectTransfer(operations_pb2.InspectTransferRequest(transfer_id=transfer_id),
                                 timeout=TIMEOUT_S).transfer
    if as_json:
        _json(t)
        return
    console.print(Panel(_fields([
        ("state", _state(t.state) + (f" ({t.reason})" if t.reason else "")),
        ("from → to", f"{t.giver_province} → {t.receiver_province}"),
        ("giver", t.giver_id_masked), ("receiver", t.receiver_id_masked),
        ("amount", f"{yuan(t.amount_fen)} {t.currency} ({t.amount_fen} fen)"),
        ("created (Beijing)", _when(t, "created_at")), ("updated (Beijing)", _when(t, "updated_at")),
        ("returned if unconfirmed at", _when(t, "return_deadline")),
        ("settlement window", t.settlement_window_id or NONE),
        ("instruction sha256", t.instruction_sha256.hex()),
    ]), title=f"transfer {shown(t.transfer_id)}", expand=False))
    history = Table("#", "state", "at (Beijing)", "reason", title="history")
    for number, event in enumerate(t.history, 1):
        _row(history, str(number), _state(event.state), _when(event, "at"), event.reason or NONE)
    console.print(history)


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
                    print(json_text(_dict(change), indent=None), flush=True)
                else:
                    console.print(f"{shown(change.cursor):>8}  {shown(change.transfer_id)}  "
                                  f"{_state(change.state):<10} "
                                  f"{shown(change.giver_province)}->{shown(change.receiver_province)}  "
                                  f"{yuan(change.amount_fen)} {shown(change.reason)}")
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
    table = Table("from", "to", "state", "count", "amount")
    for s in answer.transfers:
        _row(table, s.giver_province, s.receiver_province, _state(s.state), str(s.count), yuan(s.amount_fen))
    console.print(table)
    console.print(f"outbox backlog: {answer.outbox_backlog}; failed delivery attempts: "
                  + (", ".join(f"{shown(f.province)} {f.failed_attempts}" for f in answer.delivery_failures)
                     or "none"))


# -- settlement -----------------------------------------------------------------------------------

Window = operations_pb2.SettlementWindow


def _payment_of(window: Window, from_province: str, to_province: str) -> operations_pb2.PaymentRecord | None:
    return next((p for p in window.payments if (p.from_province, p.to_province) == (from_province, to_province)),
                None)


def _acknowledged(window: Window) -> str:
    return f"{len(set(window.acknowledged_by) & set(window.provinces))}/{len(window.provinces)}"


def _print_window(w: Window) -> None:
    """A window: when, its state, who agreed, the gross figure per pair and each province's net position."""
    closed = w.state != settlements_pb2.SETTLEMENT_WINDOW_STATE_OPEN
    console.print(Panel(_fields([
        ("state", _window_state(w.state)),
        ("period (Beijing)", f"{_when(w, 'opens_at')} – {_when(w, 'closes_at')}"),
        ("closed (Beijing)", _when(w, "closed_at")),
        ("acknowledged", f"{_acknowledged(w)} provinces" if closed else NONE),
        ("paid", f"{len(w.payments)}/{len(w.pairs)} pairs" if closed else NONE),
    ]), title=f"settlement window {shown(w.window_id)}", expand=False))
    if not closed:
        console.print("open: the figures are frozen when the window is closed")
        return
    if not w.pairs:
        console.print("no committed transfers in this window: nothing to settle")
        return
    pairs = Table("from (pays)", "to (is paid)", "gross", "transfers", "paid", title="gross figures by pair")
    for pair in w.pairs:
        paid = _payment_of(w, pair.from_province, pair.to_province)
        _row(pairs, pair.from_province, pair.to_province, yuan(pair.gross_fen), str(pair.transfer_count),
             f"{paid.bank} {paid.serial_number} {paid.date}" if paid else "no")
    console.print(pairs)
    positions = Table("province", "net", "", "acknowledged", title="net positions")
    for position in w.positions:
        side = "receives" if position.net_fen > 0 else "pays" if position.net_fen < 0 else "even"
        _row(positions, position.province, yuan(position.net_fen), side,
             "yes" if position.province in w.acknowledged_by else "no")
    console.print(positions)


def _get_window(stub: operations_pb2_grpc.OperationsStub, window_id: str) -> Window:
    return stub.GetSettlementWindow(operations_pb2.GetSettlementWindowRequest(window_id=window_id),
                                    timeout=TIMEOUT_S).window


@settlement_app.command("close")
def settlement_close(
    window_id: Annotated[str, typer.Argument(help="YYYY-MM-DD or YYYY-MM; empty: the window commits go to now.")] = "",
    ops: OpsAddress = "127.0.0.1:50052", as_json: AsJson = False,
) -> None:
    """Freeze a window's figures and send each province its part to acknowledge (closing twice changes nothing)."""
    with operations(ops) as stub, err_console.status("closing the settlement window…"):
        window = stub.CloseSettlementWindow(operations_pb2.CloseSettlementWindowRequest(window_id=window_id),
                                            timeout=TIMEOUT_S).window
    if as_json:
        _json(window)
        return
    _print_window(window)


@settlement_app.command("show")
def settlement_show(
    window_id: Annotated[str, typer.Argument(help="YYYY-MM-DD or YYYY-MM; empty: the newest windows.")] = "",
    ops: OpsAddress = "127.0.0.1:50052", as_json: AsJson = False,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Without a window id: this many, newest first.")] = 10,
    state: Annotated[list[str] | None, typer.Option(help="Without a window id: only windows in this state, "
                                                         "e.g. CLOSED (repeatable).")] = None,
) -> None:
    """One window in full, or the newest windows at a glance."""
    if window_id:
        with operations(ops) as stub:
            window = _get_window(stub, window_id)
        if as_json:
            _json(window)
        else:
            _print_window(window)
        return
    try:
        states = [settlements_pb2.SettlementWindowState.Value(WINDOW_STATE_PREFIX + s.upper()) for s in state or []]
    except ValueError:
        fail(f"unknown window state in {state}", 2)
    with operations(ops) as stub:
        answer = stub.ListSettlementWindows(operations_pb2.ListSettlementWindowsRequest(
            states=states, page_size=limit), timeout=TIMEOUT_S)
    if as_json:
        _json(operations_pb2.ListSettlementWindowsResponse(windows=answer.windows))
        return
    if not answer.windows:
        console.print("no settlement windows yet")
        return
    table = Table("window", "state", "provinces", "total gross", "transfers", "acknowledged", "paid pairs",
                  title="settlement windows, newest first")
    for w in answer.windows:
        closed = w.state != settlements_pb2.SETTLEMENT_WINDOW_STATE_OPEN
        _row(table, w.window_id, _window_state(w.state), ", ".join(w.provinces) or NONE,
             yuan(sum(p.gross_fen for p in w.pairs)) if closed else NONE,
             str(sum(p.transfer_count for p in w.pairs)) if closed else NONE,
             _acknowledged(w) if closed else NONE,
             f"{len(w.payments)}/{len(w.pairs)}" if closed else NONE)
    console.print(table)


@settlement_app.command("ack-status")
def settlement_ack_status(window_id: str, ops: OpsAddress = "127.0.0.1:50052", as_json: AsJson = False) -> None:
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
        _row(table, code, Text("yes", style="green") if done else Text("no", style="red"))
    console.print(table)
    console.print(f"{sum(done for _, done in status)} of {len(status)} provinces acknowledged; "
                  f"the window is {_window_state(window.state)}")


@settlement_app.command("record-payment")
def settlement_record_payment(
    window_id: str,
    from_province: Annotated[str, typer.Option("--from", help="The paying province, e.g. 650000.")],
    to_province: Annotated[str, typer.Option("--to", help="The paid province, e.g. 620000.")],
    bank: Annotated[str, typer.Option(help="The bank's code, e.g. ICBC or its 12-digit CNAPS number.")],
    serial: Annotated[str, typer.Option(help="The bank's serial number of the payment.")],
    date: Annotated[str, typer.Option(help="The payment's date, YYYY-MM-DD.")],
    ops: OpsAddress = "127.0.0.1:50052", as_json: AsJson = False,
) -> None:
    """Record the bank payment of one pair of an acknowledged window (D18); SETTLED once every pair is paid."""
    payment = operations_pb2.PaymentRecord(from_province=from_province, to_province=to_province, bank=bank,
                                           serial_number=serial, date=date)
    with operations(ops) as stub:
        window = stub.RecordSettlementPayment(operations_pb2.RecordSettlementPaymentRequest(
            window_id=window_id, payments=[payment]), timeout=TIMEOUT_S).window
    if as_json:
        _json(window)
        return
    console.print(f"window {shown(window.window_id)}: payment {shown(from_province)} → {shown(to_province)} "
                  f"recorded ({shown(bank)} {shown(serial)} {shown(date)}); {len(window.payments)}/{len(window.pairs)} "
                  "pairs paid; "
                  f"the window is {_window_state(window.state)}")


class ExportFormat(enum.StrEnum):
    csv = "csv"
    json = "json"


CSV_COLUMNS = ("window_id", "state", "from_province", "to_province", "gross_fen", "gross_yuan", "transfer_count",
               "paid_bank", "paid_serial_number", "paid_date")


def write_csv(window: Window, out: IO[str]) -> None:
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for pair in window.pairs:
        paid = _payment_of(window, pair.from_province, pair.to_province)
        text = [csv_text(value) for value in (window.window_id, _window_state(window.state), pair.from_province,
                                              pair.to_province)]
        payment = [csv_text(value) for value in (paid.bank, paid.serial_number, paid.date)] if paid else ["", "", ""]
        # The numbers (gross amounts are positive) are written as they are, to stay numbers.
        writer.writerow([*text, pair.gross_fen, plain_yuan(pair.gross_fen), pair.transfer_count, *payment])


EXPORT_HELP = (
    "A window's report for the funds' accountants.\n\n"
    "CSV: a header row, then one row per province pair with the columns window_id, state, from_province (pays), "
    "to_province (is paid), gross_fen, gross_yuan (e.g. 1234.56), transfer_count, and paid_bank, "
    "paid_serial_number, paid_date once that pair's payment is recorded (empty before). Net positions are not in "
    "the CSV (a province's is what it receives minus what it pays over the pairs).\n\n"
    "JSON: the whole window as the gateway answers it: pairs, net positions, acknowledgements and payments.\n\n"
    "Amounts in fen are exact integers."
)


@settlement_app.command("export", help=EXPORT_HELP)
def settlement_export(
    window_id: str,
    output_format: Annotated[ExportFormat, typer.Option("--format", help="csv or json.")] = ExportFormat.csv,
    output: Annotated[Path | None, typer.Option(dir_okay=False, help="Write here instead of stdout.")] = None,
    ops: OpsAddress = "127.0.0.1:50052",
) -> None:
    with operations(ops) as stub:
        window = _get_window(stub, window_id)
    try:
        with (open(output, "w", encoding="utf-8", newline="") if output else _stdout()) as out:
            if output_format is ExportFormat.csv:
                write_csv(window, out)
            else:
                out.write(json_text(_dict(window)) + "\n")
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror or error}")
    if output:
        err_console.print(f"wrote window {shown(window.window_id)} ({len(window.pairs)} pairs, "
                          f"{_window_state(window.state)}) to {shown(output)}", highlight=False)


@contextmanager
def _stdout() -> Iterator[IO[str]]:
    """stdout for the export, left open."""
    yield sys.stdout


def main() -> None:
    app()
