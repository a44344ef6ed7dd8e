"""`gongji db ...`: operators' commands that open the database itself rather than call the gateway.

The rest of `gongji` is a gRPC client (gateway.cli); only this module reaches into the store, and only
through gateway.store.schema. Its imports of the core are made inside the commands, so the gRPC
commands do not pay for loading SQLAlchemy and Alembic. A new database-side command group is named in
gateway.cli's GROUPS, as `db` and `audit` are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gateway.store.schema import SchemaStatus

db_app = typer.Typer(help="The database's schema, under Alembic migrations.", no_args_is_help=True)
err_console = Console(stderr=True)

DatabaseUrl = Annotated[str | None, typer.Option(
    "--database", envvar="GONGJI_DATABASE_URL", show_default=False,
    help="sqlite:///PATH or postgresql://user@host:port/db; default: $GONGJI_DATABASE_URL, else "
         "sqlite:///var/gongji.db (the gateway's own default).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


audit_app = typer.Typer(help="The tamper-evident record (hash chain and signed checkpoints).",
                        no_args_is_help=True)


def fail(message: str) -> NoReturn:
    """One line on stderr, no traceback, exit code 1 (as gateway.cli.output reports failures)."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _first_line(error: BaseException) -> str:
    # A driver's error (SQLAlchemy wraps it in `orig`) without SQLAlchemy's multi-line decoration.
    cause = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


def _shown(url: str) -> str:
    """The URL for messages, its password hidden."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url.rpartition("@")[2]


@contextmanager
def database(url: str | None) -> Iterator[tuple[Engine, str]]:
    """The database of one command and its URL for messages; failures become `fail` lines."""
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.config import ConfigError, Settings, check_database_url
    from gateway.store.schema import SchemaError, make_engine

    url = url or Settings.database_url
    shown = _shown(url)
    try:
        check_database_url(url)
        engine = make_engine(url)
    except (ConfigError, SQLAlchemyError, ValueError) as error:
        fail(f"cannot open the database {shown}: {_first_line(error)}")
    # The store runs its statements on the driver's own cursor: its errors come unwrapped by SQLAlchemy.
    driver_error: type[Exception] = getattr(engine.dialect.loaded_dbapi, "Error", SQLAlchemyError)
    try:
        yield engine, shown
    except SchemaError as error:
        fail(f"{shown}: {error}")
    except (SQLAlchemyError, driver_error) as error:
        fail(f"cannot use the database {shown}: {_first_line(error)}")
    finally:
        engine.dispose()


def _as_dict(status: SchemaStatus, shown: str) -> dict[str, str | None]:
    return {"database": shown, "state": status.state.value, "revision": status.revision, "head": status.head}


@db_app.command("upgrade")
def db_upgrade(url: DatabaseUrl = None, as_json: AsJson = False) -> None:
    """Create the schema in an empty database, or upgrade it to this version's newest revision.

    Safe to run again (at the newest revision it does nothing), and against a running gateway. A
    database at a revision this version does not know, or with tables but no revision, is refused.
    """
    from gateway.store.schema import SchemaState, upgrade

    with database(url) as (engine, shown):
        before = upgrade(engine)
    if as_json:
        print(json.dumps({**_as_dict(before, shown), "upgraded_to": before.head}))
    elif before.state is SchemaState.CURRENT:
        print(f"{shown}: already at revision {before.head} (head)")
    else:
        print(f"{shown}: upgraded from {before.revision or 'an empty database'} to revision {before.head} (head)")


@db_app.command("current")
def db_current(url: DatabaseUrl = None, as_json: AsJson = False) -> None:
    """The database's schema revision, and whether this version of the gateway can run on it."""
    from gateway.store.schema import SchemaState, schema_status

    with database(url) as (engine, shown):
        status = schema_status(engine)
    if as_json:
        print(json.dumps(_as_dict(status, shown)))
        return
    if status.state is SchemaState.CURRENT:
        print(f"{status.revision} (head)")
    else:
        print(f"{status.revision or 'no revision'} ({status.state.value}): {status.problem()}")


@db_app.command("recount")
def db_recount(url: DatabaseUrl = None, as_json: AsJson = False) -> None:
    """Recompute the monitoring totals (transfers by pair and state, each province's outbox) from the rows and
    say whether they agree with the totals the gateway keeps; exit code 1 when they do not."""
    from gateway.store.sealing import NoSealer
    from gateway.store.unit_of_work import SqlStore
    from gateway.usecases.monitoring import recount_totals

    with database(url) as (engine, shown):
        store = SqlStore(engine, NoSealer())  # totals and counts hold no personal data
        differences = recount_totals(store.unit_of_work)
    if as_json:
        print(json.dumps({"database": shown, "agree": not differences, "differences": differences}))
    elif not differences:
        print(f"{shown}: the monitoring totals agree with the rows")
    else:
        for difference in differences:
            err_console.print(f"[red]recount:[/red] {escape(difference)}", highlight=False, soft_wrap=True)
    if differences:
        raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify(url: DatabaseUrl = None, as_json: AsJson = False) -> None:
    """Recompute the whole audit chain and check every signed checkpoint; name the first bad entry.

    The gateway's public keys (current and retired) are read from the database's gateway_keys table,
    where the gateway registers each key it signs with. Exit code 1 when anything does not verify.
    """
    from gateway.security.signing import verify_signature
    from gateway.store.schema import SchemaState, schema_status
    from gateway.store.sealing import NoSealer
    from gateway.store.unit_of_work import SqlStore
    from gateway.usecases.audit import verify_audit

    with database(url) as (engine, shown):
        status = schema_status(engine)
        if status.state in (SchemaState.EMPTY, SchemaState.UNVERSIONED):  # no chain to verify: say why, as db current
            fail(f"{shown}: {status.problem()}")
        store = SqlStore(engine, NoSealer())  # the chain holds no personal data: no data keys needed
        with store.unit_of_work(read_only=True) as uow:
            keys = {key.key_id: key.public_key for key in uow.gateway_keys.list()}
        # One snapshot, no write lock: the gateway goes on writing while the chain is checked.
        report = verify_audit(store.unit_of_work, keys, verify_signature)
    if as_json:
        print(json.dumps({"database": shown, "ok": report.ok, "entries": report.entries,
                          "head_sha256": report.head.hex(), "checkpoints": report.checkpoints,
                          "findings": [{"seq": f.seq, "problem": f.problem} for f in report.findings]}))
    elif report.ok:
        print(f"{shown}: audit chain verifies: {report.entries} entries, head {report.head.hex()[:16]}…, "
              f"{report.checkpoints} signed checkpoint(s)")
    else:
        for finding in report.findings:
            err_console.print(f"[red]audit:[/red] entry {finding.seq}: {finding.problem}", highlight=False,
                              soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)
