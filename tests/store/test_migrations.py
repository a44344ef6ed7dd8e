"""Alembic migrations on a SQLite file and PostgreSQL: head is the typed tables, unknown schemas are refused."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from gateway.store import schema
from gateway.store.engine import create_schema, make_engine
from gateway.store.schema import (
    SchemaError,
    SchemaState,
    current_revision,
    ensure_known_schema,
    head_revision,
    schema_status,
    upgrade,
)
from gateway.store.tables import Base
from tests.support import DATABASES, LoopThread, empty_database, start_stack

GONGJI = Path(sys.executable).with_name("gongji")
UNKNOWN_REVISION = "ffffffffffff"


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Here the database starts empty: the migrations are what is tested."""
    yield from empty_database(request.param, tmp_path)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def differences(engine: Engine) -> list[Any]:
    """What alembic's autogenerate would change to make the database match the typed tables."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def run(sql: str, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql))


def table_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


# -- the migrations themselves -------------------------------------------------------------------


def test_the_migrations_have_one_head_and_a_chain_down_to_nothing() -> None:
    scripts = schema._scripts()
    assert scripts.get_heads() == [head_revision()]
    chain = list(scripts.walk_revisions())
    assert chain[0].revision == head_revision() and chain[-1].down_revision is None


def test_upgrading_an_empty_database_creates_exactly_the_typed_tables(engine: Engine) -> None:
    """The drift check: fails when gateway/store/tables/ changes without a migration (make migration)."""
    assert schema_status(engine).state is SchemaState.EMPTY and current_revision(engine) is None
    before = upgrade(engine)
    assert before.state is SchemaState.EMPTY
    assert current_revision(engine) == head_revision()
    assert differences(engine) == []
    assert table_names(engine) == set(Base.metadata.tables) | {schema.VERSION_TABLE}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, version FROM routing_version")).all() == [(1, 0)]


def test_upgrading_again_changes_nothing(engine: Engine) -> None:
    upgrade(engine)
    run("UPDATE routing_version SET version = 7", engine)
    again = upgrade(engine)
    assert again.state is SchemaState.CURRENT and again.revision == head_revision()
    assert ensure_known_schema(engine, auto_upgrade=False).state is SchemaState.CURRENT
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, version FROM routing_version")).all() == [(1, 7)]
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head_revision()]
    assert differences(engine) == []


def test_0004_keys_suspensions_by_person_and_province_keeping_the_rows_both_ways(engine: Engine) -> None:
    """Primary keys cannot be altered in SQLite: the table is rebuilt, its rows copied up and back down."""
    person, other = "01" * 32, "02" * 32
    row = "INSERT INTO member_suspensions (person_ref, province, since) VALUES ({ref}, '{province}', '{since}')"
    hex_literal = "decode('{}', 'hex')" if engine.dialect.name == "postgresql" else "x'{}'"

    def insert(ref: str, province: str, since: str) -> None:
        run(row.format(ref=hex_literal.format(ref), province=province, since=since), engine)

    def rows() -> list[tuple[bytes, str]]:
        with engine.connect() as conn:
            return [(bytes(r[0]), r[1]) for r in conn.execute(text(
                "SELECT person_ref, province FROM member_suspensions ORDER BY person_ref, province"))]

    def primary_key() -> list[str]:
        with engine.connect() as conn:
            return list(inspect(conn).get_pk_constraint("member_suspensions")["constrained_columns"])

    with engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), "0003")
    insert(person, "620000", "2026-05-01 00:00:00")
    insert(other, "650000", "2026-05-02 00:00:00")
    assert primary_key() == ["person_ref"]
    with engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), "0004")
    assert primary_key() == ["person_ref", "province"]
    insert(person, "650000", "2026-05-03 00:00:00")  # the same person, suspended by a second province
    assert rows() == [(bytes.fromhex(person), "620000"), (bytes.fromhex(person), "650000"),
                      (bytes.fromhex(other), "650000")]
    with engine.begin() as conn:
        command.downgrade(schema.alembic_config(conn), "0003")
    assert primary_key() == ["person_ref"]
    assert rows() == [(bytes.fromhex(person), "620000"), (bytes.fromhex(other), "650000")]  # one row a person


def test_0005_drops_the_receivers_birth_date_keeping_the_bindings(engine: Engine, db_url: str) -> None:
    """With the masked ID number (first 6 + last 4) the birth date was the whole ID number (D19)."""
    blob = "decode('{}', 'hex')" if engine.dialect.name == "postgresql" else "x'{}'"
    with engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), "0004")
    for n in range(20):
        run("INSERT INTO bindings (binding_id, state, reason, giver_province, receiver_province, giver_ref, "
            "receiver_ref, giver_id_masked, receiver_id_masked, relation_code, authorised_amount_fen, used_amount_fen, "
            "receiver_birth_date, consent_by, created_at, updated_at, attestation_method, evidence_ref, attested_at, "
            "proposal_sha256, proposal_payload, proposal_signer, proposal_key_id, proposal_alg, proposal_signature) "
            f"VALUES ('b-{n}', 'ACTIVE', '', '650000', '620000', {blob.format('01' * 32)}, {blob.format('02' * 32)}, "
            "'650502********1230', '620102********0026', '52', 0, 0, '1965-05-12', '2026-05-02 00:00:00', "
            "'2026-05-01 00:00:00', '2026-05-01 00:00:00', 'FACE', 'ev-1', '2026-05-01 00:00:00', "
            f"{blob.format('03' * 32)}, {blob.format('04' * 8)}, '650000', '650000-k1', 'ed25519', "
            f"{blob.format('05' * 64)})",
            engine)
    with engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), "0005")
    with engine.connect() as conn:
        assert "receiver_birth_date" not in {c["name"] for c in inspect(conn).get_columns("bindings")}
        assert conn.execute(text("SELECT count(*) FROM bindings")).scalar() == 20
    if engine.dialect.name == "sqlite":
        path = Path(db_url.removeprefix("sqlite:///"))
        engine.dispose()
        with closing(sqlite3.connect(path)) as raw:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stored = b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
        # (Debian's SQLite zeroes freed pages by default; the migration asks for it on every build.)
        assert b"1965-05-12" not in stored, "the dropped column's old pages are left in the file"


def test_0007_stores_what_each_outcome_tells_filled_from_the_message_ids(engine: Engine) -> None:
    """The state comes from the id (the formats stay: provinces de-duplicate on them); the reason from the
    transfer or binding while it is still in that state, as the gateway sent it until then."""
    blob = "decode('{}', 'hex')" if engine.dialect.name == "postgresql" else "x'{}'"
    at = "'2026-05-01 00:00:00'"
    with engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), "0006")
    for transfer_id, state, reason in (("t-1", "DECLINED", "RECEIVER_DECLINED"), ("tr:a:1", "COMMITTED", "")):
        run("INSERT INTO transfers (transfer_id, state, reason, giver_province, receiver_province, giver_ref, "
            "receiver_ref, giver_id_masked, receiver_id_masked, amount_fen, currency, binding_id, created_at, "
            "updated_at, return_deadline, delivery_deadline, instruction_sha256, instruction_payload, "
            "instruction_signer, instruction_key_id, instruction_alg, instruction_signature, settlement_window_id) "
            f"VALUES ('{transfer_id}', '{state}', '{reason}', '650000', '620000', {blob.format('01' * 32)}, "
            f"{blob.format('02' * 32)}, '650502********1230', '620102********0026', 100, 'CNY', 'b-1', {at}, {at}, "
            f"{at}, {at}, {blob.format('03' * 32)}, {blob.format('04' * 8)}, '650000', 'k1', 'ed25519', "
            f"{blob.format('05' * 64)}, '')", engine)
    for binding_id, state, reason in (("b-1", "SUSPENDED", "SETTLEMENT_SUSPENDED"), ("b-2", "ACTIVE", "")):
        run("INSERT INTO bindings (binding_id, state, reason, giver_province, receiver_province, giver_ref, "
            "receiver_ref, giver_id_masked, receiver_id_masked, relation_code, authorised_amount_fen, used_amount_fen, "
            "consent_by, created_at, updated_at, attestation_method, evidence_ref, attested_at, proposal_sha256, "
            "proposal_payload, proposal_signer, proposal_key_id, proposal_alg, proposal_signature) "
            f"VALUES ('{binding_id}', '{state}', '{reason}', '650000', '620000', {blob.format('01' * 32)}, "
            f"{blob.format('02' * 32)}, '650502********1230', '620102********0026', '52', 0, 0, {at}, {at}, {at}, "
            f"'FACE', 'ev-1', {at}, {blob.format('03' * 32)}, {blob.format('04' * 8)}, '650000', 'k1', 'ed25519', "
            f"{blob.format('05' * 64)})", engine)
    messages = [  # kind, message id, subject, and what the row tells after the upgrade
        ("DELIVER_TRANSFER", "dlv:t-1", "t-1", "", ""),
        ("NOTIFY_TRANSFER_OUTCOME", "out:t-1:DECLINED", "t-1", "DECLINED", "RECEIVER_DECLINED"),
        ("NOTIFY_TRANSFER_OUTCOME", "out:tr:a:1:COMMITTED", "tr:a:1", "COMMITTED", ""),
        ("NOTIFY_TRANSFER_OUTCOME", "out:t-gone:REJECTED", "t-gone", "REJECTED", ""),
        ("REQUEST_CONSENT", "csn:b-1", "b-1", "", ""),
        ("NOTIFY_BINDING_OUTCOME", "bout:b-1:SUSPENDED:1777593600.000000", "b-1", "SUSPENDED", "SETTLEMENT_SUSPENDED"),
        ("NOTIFY_BINDING_OUTCOME", "bout:b-2:SUSPENDED:1777593600.000000", "b-2", "SUSPENDED", ""),  # ACTIVE again
        ("NOTIFY_BINDING_OUTCOME", "bout:b-2:ACTIVE:1777597200.000000", "b-2", "ACTIVE", ""),
        ("NOTIFY_SETTLEMENT", "stl:2026-05-01:650000", "2026-05-01", "", ""),
    ]
    for kind, message_id, subject_id, _, _ in messages:
        run("INSERT INTO outbox (destination, kind, message_id, subject_id, status, attempts, next_attempt_at, "
            f"last_error, created_at, done_at) VALUES ('620000', '{kind}', '{message_id}', '{subject_id}', 'PENDING', "
            f"0, {at}, '', {at}, NULL)", engine)

    def outbox() -> list[tuple[Any, ...]]:
        with engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("outbox")}
            told = ", state, reason" if "state" in columns else ""
            return [tuple(row) for row in conn.execute(text(f"SELECT kind, message_id, subject_id{told} FROM outbox "
                                                            "ORDER BY id"))]

    with engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), "0007")
    assert outbox() == messages
    with engine.begin() as conn:
        command.downgrade(schema.alembic_config(conn), "0006")
    assert outbox() == [m[:3] for m in messages]
    upgrade(engine)
    assert differences(engine) == []  # rebuilt both ways on SQLite, the table keeps its unique key and index


def test_0010_fills_each_windows_figures_from_its_committed_transfers(engine: Engine) -> None:
    blob = "decode('{}', 'hex')" if engine.dialect.name == "postgresql" else "x'{}'"
    at = "'2026-05-01 00:00:00'"
    with engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), "0009")
    rows = [("t-1", "COMMITTED", "620000", 100, "2026-05-01"), ("t-2", "COMMITTED", "620000", 250, "2026-05-01"),
            ("t-3", "COMMITTED", "650000", 7, "2026-05-01"), ("t-4", "COMMITTED", "620000", 40, "2026-05-02"),
            ("t-5", "DECLINED", "620000", 999, ""), ("t-6", "RECEIVED", "620000", 999, "")]
    for transfer_id, state, receiver, amount, window_id in rows:
        giver = "650000" if receiver == "620000" else "620000"
        run("INSERT INTO transfers (transfer_id, state, reason, giver_province, receiver_province, giver_ref, "
            "receiver_ref, giver_id_masked, receiver_id_masked, amount_fen, currency, binding_id, created_at, "
            "updated_at, return_deadline, delivery_deadline, instruction_sha256, instruction_payload, "
            "instruction_signer, instruction_key_id, instruction_alg, instruction_signature, settlement_window_id) "
            f"VALUES ('{transfer_id}', '{state}', '', '{giver}', '{receiver}', {blob.format('01' * 32)}, "
            f"{blob.format('02' * 32)}, '650502********1230', '620102********0026', {amount}, 'CNY', 'b-1', {at}, "
            f"{at}, {at}, {at}, {blob.format('03' * 32)}, {blob.format('04' * 8)}, '{giver}', 'k1', 'ed25519', "
            f"{blob.format('05' * 64)}, '{window_id}')", engine)
    upgrade(engine)
    with engine.connect() as conn:
        kept = {tuple(row) for row in conn.execute(text(
            "SELECT window_id, giver_province, receiver_province, count, amount_fen FROM settlement_totals"))}
    assert kept == {("2026-05-01", "650000", "620000", 2, 350), ("2026-05-01", "620000", "650000", 1, 7),
                    ("2026-05-02", "650000", "620000", 1, 40)}
    with engine.begin() as conn:
        command.downgrade(schema.alembic_config(conn), "0009")
    assert "settlement_totals" not in table_names(engine)


def test_an_empty_database_is_refused_without_auto_upgrade(engine: Engine) -> None:
    with pytest.raises(SchemaError, match="`gongji db upgrade`"):
        ensure_known_schema(engine, auto_upgrade=False)
    assert table_names(engine) == set()


def test_a_revision_this_code_does_not_know_is_refused_even_with_auto_upgrade(engine: Engine) -> None:
    upgrade(engine)
    run(f"UPDATE alembic_version SET version_num = '{UNKNOWN_REVISION}'", engine)
    status = schema_status(engine)
    assert status.state is SchemaState.UNKNOWN and status.revision == UNKNOWN_REVISION
    for auto_upgrade in (True, False):
        with pytest.raises(SchemaError, match=f"revision {UNKNOWN_REVISION}, which this gateway does not know"):
            ensure_known_schema(engine, auto_upgrade)
    assert current_revision(engine) == UNKNOWN_REVISION


def test_tables_without_a_revision_are_refused(engine: Engine) -> None:
    create_schema(engine)  # the typed tables, made without the migrations
    assert schema_status(engine).state is SchemaState.UNVERSIONED
    with pytest.raises(SchemaError, match="no schema revision"):
        upgrade(engine)
    assert schema.VERSION_TABLE not in table_names(engine)


# -- a later migration, as the next one will be ----------------------------------------------------

LATER_REVISION = '''"""A probe revision written by tests/store/test_migrations.py."""

import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}


def downgrade() -> None:
    pass
'''
# A column added and another widened, the way SQLite needs it (batch: the table is copied).
WIDEN_AND_ADD = """\
    with op.batch_alter_table("provinces") as batch:
        batch.add_column(sa.Column("probe", sa.String(8), nullable=False, server_default="p"))
        batch.alter_column("name", type_=sa.String(128), existing_type=sa.String(64), existing_nullable=False)"""
# A migration that fails half-way, after some DDL of its own.
FAIL_HALF_WAY = """\
    op.create_table("probe", sa.Column("id", sa.Integer(), primary_key=True))
    with op.batch_alter_table("provinces") as batch:
        batch.add_column(sa.Column("probe", sa.String(8), nullable=False, server_default="p"))
    raise RuntimeError("the probe migration fails")"""


@pytest.fixture
def later_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Gives this code's migrations one more revision, 9999, after head; returns the old head."""

    def add(body: str) -> str:
        old_head = head_revision()
        migrations = tmp_path / "migrations"
        shutil.copytree(schema.MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
        (migrations / "versions" / "9999_probe.py").write_text(
            LATER_REVISION.format(head=old_head, body=body), encoding="utf-8")
        monkeypatch.setattr(schema, "MIGRATIONS", migrations)
        schema._scripts.cache_clear()
        return old_head

    yield add
    schema._scripts.cache_clear()


def at_older_revision(engine: Engine, revision: str) -> None:
    """The database as the previous version of the code left it, with a province in it."""
    with engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), revision)
        conn.execute(text("INSERT INTO provinces (code, name, endpoint, status, policy_json, updated_at) "
                          "VALUES ('650000', '新疆', '127.0.0.1:1', 'ACTIVE', '{}', '2026-05-01 00:00:00')"))


def test_an_older_known_revision_is_refused_or_upgraded(
        engine: Engine, later_revision: Callable[[str], str]) -> None:
    older = later_revision(WIDEN_AND_ADD)
    at_older_revision(engine, older)
    status = schema_status(engine)
    assert status.state is SchemaState.BEHIND and (status.revision, status.head) == (older, "9999")
    with pytest.raises(SchemaError, match=f"at revision {older}, this gateway needs 9999: run `gongji db upgrade`"):
        ensure_known_schema(engine, auto_upgrade=False)
    assert ensure_known_schema(engine, auto_upgrade=True).state is SchemaState.BEHIND
    assert current_revision(engine) == "9999"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT code, name, probe FROM provinces")).all() == [("650000", "新疆", "p")]
        columns = {c["name"]: c for c in inspect(conn).get_columns("provinces")}
    assert getattr(columns["name"]["type"], "length", None) == 128


def test_a_failed_upgrade_leaves_the_database_as_it_was(
        engine: Engine, later_revision: Callable[[str], str]) -> None:
    older = later_revision(FAIL_HALF_WAY)
    at_older_revision(engine, older)
    tables_before = table_names(engine)
    with pytest.raises(RuntimeError, match="the probe migration fails"):
        upgrade(engine)
    assert current_revision(engine) == older and table_names(engine) == tables_before
    with engine.connect() as conn:
        assert "probe" not in {c["name"] for c in inspect(conn).get_columns("provinces")}
        assert conn.execute(text("SELECT code FROM provinces")).scalars().all() == ["650000"]


# -- the gateway at start-up -----------------------------------------------------------------------


def test_the_gateway_starts_on_an_upgraded_database_without_migrating(
        loop_thread: LoopThread, tmp_path: Path, db_url: str, engine: Engine) -> None:
    upgrade(engine)
    # Both stub provinces registered and a binding made ACTIVE through them: the schema serves.
    stack = start_stack(loop_thread, tmp_path, db_url, auto_migrate=False)
    stack.close()
    assert stack.binding_id and current_revision(engine) == head_revision()


def test_the_gateway_refuses_a_database_it_may_not_run_on(
        loop_thread: LoopThread, tmp_path: Path, db_url: str, engine: Engine) -> None:
    with pytest.raises(SchemaError, match="no schema: create it with `gongji db upgrade`"):
        start_stack(loop_thread, tmp_path, db_url, with_stubs=False, auto_migrate=False)
    assert table_names(engine) == set()
    upgrade(engine)
    run(f"UPDATE alembic_version SET version_num = '{UNKNOWN_REVISION}'", engine)
    with pytest.raises(SchemaError, match=UNKNOWN_REVISION):
        start_stack(loop_thread, tmp_path, db_url, with_stubs=False)


def test_the_gateway_refuses_tables_without_a_revision(
        loop_thread: LoopThread, tmp_path: Path, db_url: str, engine: Engine) -> None:
    create_schema(engine)
    with pytest.raises(SchemaError, match="no schema revision"):
        start_stack(loop_thread, tmp_path, db_url, with_stubs=False)


def python_m_gateway(tmp_path: Path, database_url: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`python -m gateway` on `database_url`, expected to refuse before any port opens (so plaintext on
    127.0.0.1:0 is as good as TLS here)."""
    env = {**os.environ, "GONGJI_DATABASE_URL": database_url, "GONGJI_INSECURE_DEV_PLAINTEXT": "true",
           "GONGJI_LISTEN": "127.0.0.1:0", "GONGJI_OPS_LISTEN": "127.0.0.1:0", "GONGJI_METRICS_LISTEN": "",
           "GONGJI_GATEWAY_KEY_FILE": str(tmp_path / "keys" / "gateway.key"),
           "GONGJI_ID_HASH_KEY_FILE": str(tmp_path / "keys" / "id-hash.key"),
           "GONGJI_DATA_KEY_FILE": str(tmp_path / "keys" / "data.keys"), **settings}
    return subprocess.run([sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=60)


def test_python_m_gateway_refuses_in_one_line(tmp_path: Path, db_url: str, engine: Engine) -> None:
    done = python_m_gateway(tmp_path, db_url, GONGJI_AUTO_MIGRATE="false")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("gateway: database schema: the database has no schema: create it with "
                                   "`gongji db upgrade` (or start the gateway with GONGJI_AUTO_MIGRATE=true)")
    assert table_names(engine) == set()


def test_python_m_gateway_names_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    """No traceback for an operator whose database is down or mistyped, and no password in the message."""
    done = python_m_gateway(tmp_path, "postgresql://gongji:s3cret@127.0.0.1:1/gongji")
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("gateway: cannot open the database postgresql://127.0.0.1:1/gongji: "), line
    assert "refused" in line.lower() and "s3cret" not in line


# -- gongji db ---------------------------------------------------------------------------------------


def gongji(*args: str, database: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "GONGJI_DATABASE_URL"}
    if database is not None:
        env["GONGJI_DATABASE_URL"] = database
    return subprocess.run([str(GONGJI), *args], env=env, capture_output=True, text=True, timeout=60)


def test_gongji_db_upgrade_and_current(db_url: str, engine: Engine) -> None:
    head = head_revision()
    current = gongji("db", "current", "--database", db_url)
    assert current.returncode == 0, current.stderr
    assert current.stdout.startswith("no revision (empty): the database has no schema")

    upgraded = gongji("db", "upgrade", "--database", db_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip().endswith(f"upgraded from an empty database to revision {head} (head)")
    assert differences(engine) == []

    # The URL from the environment, as the gateway reads it.
    again = gongji("db", "upgrade", database=db_url)
    assert again.returncode == 0 and again.stdout.strip().endswith(f"already at revision {head} (head)")
    assert gongji("db", "current", database=db_url).stdout.strip() == f"{head} (head)"
    as_json = json.loads(gongji("db", "current", "--json", database=db_url).stdout)
    assert as_json["state"] == "current" and as_json["revision"] == as_json["head"] == head


def test_gongji_db_upgrade_refuses_an_unknown_revision_in_one_line(db_url: str, engine: Engine) -> None:
    upgrade(engine)
    run(f"UPDATE alembic_version SET version_num = '{UNKNOWN_REVISION}'", engine)
    refused = gongji("db", "upgrade", "--database", db_url)
    assert refused.returncode == 1 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1 and "does not know" in refused.stderr
    current = gongji("db", "current", "--database", db_url)
    assert current.returncode == 0 and current.stdout.startswith(f"{UNKNOWN_REVISION} (unknown)")


@pytest.mark.parametrize("url", [
    "postgresql://nobody:secret@127.0.0.1:1/gongji",  # nothing listens there
    "mysql://root@127.0.0.1/gongji",  # not a database the gateway runs on
    "postgresql://root@127.0.0.1:notaport/gongji",
])
def test_gongji_db_failures_are_one_line_and_exit_1(url: str) -> None:
    for subcommand in ("upgrade", "current"):
        failed = gongji("db", subcommand, "--database", url)
        assert failed.returncode == 1, failed.stdout
        lines = failed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), failed.stderr
        assert "Traceback" not in failed.stderr and "secret" not in failed.stderr
