"""`gongji`: the operators' command line, a client of the Operations service (typer + rich)."""

from __future__ import annotations

import typer

from gateway.cli.admin import add_admin_commands
from gateway.cli.bindings import bindings_app
from gateway.cli.provinces import provinces_app
from gateway.cli.quotas import quotas_app
from gateway.cli.settlement import settlement_app
from gateway.cli.stats import stats
from gateway.cli.transfers import transfers_app

app = typer.Typer(help="Operate the Gongji exchange: provinces, transfers, bindings, settlement, quotas, stats, the "
                       "database schema.", no_args_is_help=True)
app.add_typer(provinces_app, name="provinces")
app.add_typer(transfers_app, name="transfers")
app.add_typer(bindings_app, name="bindings")
app.add_typer(settlement_app, name="settlement")
app.add_typer(quotas_app, name="quotas")
# `db` and `audit`: the only commands that open the database rather than call the gateway (gateway/cli/admin.py).
add_admin_commands(app)
app.command("stats")(stats)


def main() -> None:
    app()
