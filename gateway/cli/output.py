"""How `gongji` shows what it prints: consoles, escapes, JSON and CSV text, amounts, times, tables, failures."""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import UTC
from typing import Any, NoReturn

import typer
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gateway.domain.clock import BEIJING
from protos.gongji.v1 import transfers_pb2

# No emoji codes: a value such as ":warning:" from the gateway is printed as written.
console = Console(emoji=False)
# Errors and progress go to stderr, so that stdout holds only the answer (JSON or CSV for scripts).
err_console = Console(stderr=True, emoji=False)

NONE = "—"


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


def fail(message: str, code: int = 1) -> NoReturn:
    """A failure found by the CLI itself, printed like the gateway's: one line, no traceback."""
    err_console.print(f"[red]error:[/red] {shown(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def as_dict(message: Message) -> dict[str, Any]:
    # Loaded for --json only: a table's command (`gongji stats` every few seconds) does not pay its 9 ms.
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


def print_json(message: Message) -> None:
    print(json_text(as_dict(message)))


def yuan(fen: int) -> str:
    """Fen as yuan for people: ¥1,234.56 (exact: integer arithmetic, never a float)."""
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}¥{whole:,}.{cents:02d}"


def plain_yuan(fen: int) -> str:
    """Fen as yuan for files: 1234.56."""
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}{whole}.{cents:02d}"


def beijing_time(message: Message, field: str) -> str:
    """A timestamp field in Beijing time (windows, daily limits and returns are), or a dash when unset."""
    if not message.HasField(field):
        return NONE
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def transfer_state(value: transfers_pb2.TransferState.ValueType) -> str:
    return transfers_pb2.TransferState.Name(value).removeprefix("TRANSFER_STATE_")


def field_grid(rows: list[tuple[str, str]]) -> Table:
    """Named values, one a line; each value printed as it is (see `visible`), never read as markup."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in rows:
        grid.add_row(name, Text(visible(value)))
    return grid


def add_row(table: Table, *cells: str | Text) -> None:
    """A table row: str cells printed as they are (see `visible`), never read as markup; Text cells carry the
    CLI's own styles."""
    table.add_row(*(Text(visible(cell)) if isinstance(cell, str) else cell for cell in cells))
