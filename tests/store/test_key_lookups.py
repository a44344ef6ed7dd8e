"""A change addressed by a row's key reads that key's one entry, however rare the state it expects.

Every transfer, outbox message and binding passes through states that few rows are in at a time (RECEIVED,
PENDING, PROPOSED). PostgreSQL plans a statement with its values; its statistics saying that few rows are in the
expected state (gathered, as on a large table, when its sample held none), it chose to read that state's whole
range of a (state, …) index, dead versions included, for the key's one row. Each statement is explained here with
its values, on tables of final rows whose statistics were gathered before a few rows in flight were added.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from gateway.store.engine import make_engine
from gateway.store.prepared import Prepared
from gateway.store.statements import Statements
from gateway.store.tables import bindings_t, outbox_t, transfers_t

AT = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
FINAL_ROWS = 20_000
IN_FLIGHT = 3


def _transfer(transfer_id: str, state: str) -> dict[str, Any]:
    return {"transfer_id": transfer_id, "state": state, "reason": "", "giver_province": "650000",
            "receiver_province": "620000", "giver_ref": b"\0" * 32, "receiver_ref": b"\1" * 32,
            "giver_id_masked": "6501**********0011", "receiver_id_masked": "6201**********0022", "amount_fen": 100,
            "currency": "CNY", "binding_id": "", "created_at": AT, "updated_at": AT, "return_deadline": AT,
            "delivery_deadline": AT, "instruction_sha256": b"\0" * 32, "instruction_payload": b"",
            "instruction_signer": "650000", "instruction_key_id": "k", "instruction_alg": "ed25519",
            "instruction_signature": b"", "settlement_window_id": ""}


def _message(number: int, status: str) -> dict[str, Any]:
    return {"id": number, "destination": "620000", "kind": "DELIVERY", "message_id": f"dlv:t-{number}",
            "subject_id": f"t-{number}", "state": "", "reason": "", "status": status, "attempts": 1,
            "next_attempt_at": AT, "last_error": "", "created_at": AT}


def _binding(binding_id: str, state: str) -> dict[str, Any]:
    return {"binding_id": binding_id, "state": state, "reason": "", "giver_province": "650000",
            "receiver_province": "620000", "giver_ref": b"\0" * 32, "receiver_ref": b"\1" * 32,
            "giver_id_masked": "6501**********0011", "receiver_id_masked": "6201**********0022",
            "relation_code": "10", "authorised_amount_fen": 0, "used_amount_fen": 0, "consent_by": AT,
            "created_at": AT, "updated_at": AT, "proposal_sha256": b"\0" * 32, "proposal_payload": b"",
            "proposal_signer": "650000", "proposal_key_id": "k", "proposal_alg": "ed25519",
            "proposal_signature": b""}


@pytest.fixture
def filled(db_url: str) -> Iterator[Engine]:
    """Many rows in a final state and the planner's statistics of them, then a few rows in flight."""
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(insert(transfers_t), [_transfer(f"t-{n}", "COMMITTED") for n in range(FINAL_ROWS)])
        connection.execute(insert(outbox_t), [_message(n, "DONE") for n in range(1, FINAL_ROWS + 1)])
        connection.execute(insert(bindings_t), [_binding(f"b-{n}", "ACTIVE") for n in range(FINAL_ROWS)])
        connection.exec_driver_sql("ANALYZE")
    with engine.begin() as connection:
        connection.execute(insert(transfers_t), [_transfer(f"r-{n}", "RECEIVED") for n in range(IN_FLIGHT)])
        connection.execute(insert(outbox_t), [_message(FINAL_ROWS + n, "PENDING") for n in range(1, IN_FLIGHT + 1)])
        connection.execute(insert(bindings_t), [_binding(f"p-{n}", "PROPOSED") for n in range(IN_FLIGHT)])
    yield engine
    engine.dispose()


def plan(engine: Engine, statement: Prepared, values: dict[str, Any]) -> str:
    """The database's plan of `statement` with these values, as one line."""
    explain = "EXPLAIN" if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(f"{explain} {statement.sql}", statement.params(values)).fetchall()
    return " / ".join(str(row[-1]) for row in rows)


# Each change by key, its values, and how each database names the table's key in a plan.
CHANGES = {
    "change_state": ({"w_id": "r-1", "w_from": "RECEIVED", "state": "DELIVERED", "reason": "", "updated_at": AT},
                     {"postgresql": "transfers_pkey", "sqlite": "sqlite_autoindex_transfers_1"}),
    "change_binding_state": ({"w_id": "p-1", "w_from": "PROPOSED", "state": "ACTIVE", "reason": "",
                              "updated_at": AT},
                             {"postgresql": "bindings_pkey", "sqlite": "sqlite_autoindex_bindings_1"}),
    "mark_done": ({"w_id": FINAL_ROWS + 1, "at": AT}, {"postgresql": "outbox_pkey", "sqlite": "INTEGER PRIMARY KEY"}),
    "mark_retry": ({"w_id": FINAL_ROWS + 1, "next_attempt_at": AT, "error": "x"},
                   {"postgresql": "outbox_pkey", "sqlite": "INTEGER PRIMARY KEY"}),
    "release_lease": ({"w_id": FINAL_ROWS + 1, "now": AT},
                      {"postgresql": "outbox_pkey", "sqlite": "INTEGER PRIMARY KEY"}),
    "expire_pending": ({"w_kind": "DELIVERY", "w_subject": f"t-{FINAL_ROWS + 1}", "at": AT, "error": "x"},
                       {"postgresql": "ix_outbox_subject_kind_id", "sqlite": "ix_outbox_subject_kind_id"}),
}


def test_a_change_by_key_reads_the_key_whatever_state_it_expects(filled: Engine) -> None:
    statements = Statements(filled)
    plans = {name: plan(filled, getattr(statements, name), values) for name, (values, _) in CHANGES.items()}
    astray = {name: found for name, found in plans.items() if CHANGES[name][1][filled.dialect.name] not in found}
    assert not astray, sorted(astray)
