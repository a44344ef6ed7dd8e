"""`gongji`: the operators' command line, a client of the Operations service (typer + rich).

A command loads only its own module: `gongji stats`, run every few seconds beside the gateway, does not import
and build the provinces', settlement's or database commands. `gongji --help` (or an unknown command) and
`app`, which the tests drive, have them all.

An operator's command often runs on the gateway's own host, beside the gateway and its database, and a
monitoring job may run `gongji stats` every few seconds: `main()` first lowers the command's CPU priority
(GONGJI_CLI_NICE, added to the caller's niceness; default 10, 0 keeps it), so that what shares its scheduling
group (its session under autogroup, or its cgroup: the gateway, when started beside it) runs first. It does so
before loading typer, rich and gRPC, most of a command's start-up.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

HELP = ("Operate the Gongji exchange: provinces, transfers, bindings, settlement, quotas, stats, the database "
        "schema.")

# Each top-level name: the module that holds it, and its command group or (stats) its command.
GROUPS = {"provinces": ("gateway.cli.provinces", "provinces_app"),
          "transfers": ("gateway.cli.transfers", "transfers_app"),
          "bindings": ("gateway.cli.bindings", "bindings_app"),
          "settlement": ("gateway.cli.settlement", "settlement_app"),
          "quotas": ("gateway.cli.quotas", "quotas_app"),
          # The only commands that open the database rather than call the gateway (gateway/cli/admin.py).
          "db": ("gateway.cli.admin", "db_app"),
          "audit": ("gateway.cli.admin", "audit_app")}
COMMANDS = {"stats": ("gateway.cli.stats", "stats")}
NICENESS_DEFAULT = 10
NICENESS_VARIABLE = "GONGJI_CLI_NICE"


def _root() -> None:
    """Operate the Gongji exchange."""  # the group's own callback: a tree of one command stays a group


def build(only: str | None = None) -> typer.Typer:
    """The command line: every group and command, or only the one named `only`."""
    import typer  # here, not at the top: main() lowers the priority first

    cli = typer.Typer(help=HELP, no_args_is_help=True)
    cli.callback()(_root)
    for name, (module, attribute) in GROUPS.items():
        if only in (None, name):
            cli.add_typer(getattr(import_module(module), attribute), name=name)
    for name, (module, attribute) in COMMANDS.items():
        if only in (None, name):
            cli.command(name)(getattr(import_module(module), attribute))
    return cli


def yield_cpu() -> None:
    """Lower this process's CPU priority by GONGJI_CLI_NICE (default 10): what shares its scheduling group goes
    first. A value that is not a whole number from 0 to 19 is a usage error (exit code 2)."""
    raw = (os.environ.get(NICENESS_VARIABLE) or str(NICENESS_DEFAULT)).strip()  # empty: the default
    if not (raw.isascii() and raw.isdigit() and 0 <= int(raw) <= 19):
        print(f"error: {NICENESS_VARIABLE} must be a whole number from 0 to 19, not {raw!r}", file=sys.stderr)
        raise SystemExit(2)
    if int(raw):
        os.nice(int(raw))  # only ever raises the niceness, which every process may do


def main() -> None:
    yield_cpu()
    named = sys.argv[1] if len(sys.argv) > 1 else None
    build(named if named in GROUPS or named in COMMANDS else None)()


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole command line, built when asked for
        return build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
