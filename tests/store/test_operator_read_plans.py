"""The operators' reads are index ranges read in order: SQLite's own query plans, for each read and each order."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from gateway.domain.bindings import BindingState
from gateway.domain.monitoring import TransferFilter
from gateway.domain.outbox import OutboxKind
from gateway.domain.transfers import TransferState
from gateway.security.encryption import FieldCipher
from gateway.store.engine import make_engine
from gateway.store.schema import upgrade
from gateway.store.unit_of_work import SqlStore, SqlUnitOfWork

AT = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlStore]:
    engine = make_engine(f"sqlite:///{tmp_path / 'plans.db'}")
    upgrade(engine)
    yield SqlStore(engine, FieldCipher.generate())
    engine.dispose()


def plans(store: SqlStore, read: Callable[[SqlUnitOfWork], Any]) -> list[str]:
    """SQLite's plan of every statement `read` runs (as run: SQLite's trace gives them with their values)."""
    with store.unit_of_work() as uow:
        connection = uow._connection.driver_connection  # type: ignore[attr-defined]
        statements: list[str] = []
        connection.set_trace_callback(statements.append)
        read(uow)
        connection.set_trace_callback(None)
        found = []
        for sql in statements:
            if sql.lstrip().upper().startswith("SELECT"):
                rows = connection.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
                found.append(" / ".join(str(row[-1]) for row in rows))
    assert found, "the read ran no SELECT"
    return found


def assert_index_ranges(found: list[str], index: str) -> None:
    for plan in found:
        # "SCAN ... USING INDEX" reads the index in its order (stopping at the page's end), "SEARCH" a range of it;
        # a full scan or a sort would name no index or a TEMP B-TREE.
        assert f"USING INDEX {index}" in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.parametrize("newest_first", [True, False])
@pytest.mark.parametrize("after", [None, (AT, "tr-0042")])
def test_a_page_of_transfers_is_one_index_range_in_either_order(sqlite_store: SqlStore, newest_first: bool,
                                                                after: tuple[datetime, str] | None) -> None:
    found = plans(sqlite_store, lambda uow: uow.transfers.page(TransferFilter(), after, 101,
                                                               newest_first=newest_first))
    assert_index_ranges(found, "ix_transfers_created_at_transfer_id")
    if after is not None:  # a seek to the position, not a walk from the start of the index
        assert all(p.startswith("SEARCH") for p in found), found


def test_a_page_within_a_time_range_seeks_to_it(sqlite_store: SqlStore) -> None:
    where = TransferFilter(created_from=AT, created_to=datetime(2026, 5, 5, tzinfo=UTC),
                           states=(TransferState.COMMITTED,))
    found = plans(sqlite_store, lambda uow: uow.transfers.page(where, None, 11, newest_first=True))
    assert_index_ranges(found, "ix_transfers_state_created_at")
    assert all("created_at>? AND created_at<?" in plan for plan in found), found


def test_the_messages_about_one_subject_are_one_index_range_per_kind(sqlite_store: SqlStore) -> None:
    kinds = (OutboxKind.NOTIFY_QUOTA, OutboxKind.NOTIFY_CONSUMPTION)
    found = plans(sqlite_store, lambda uow: uow.outbox.of_subject("b-0042", kinds, 50))
    assert len(found) == len(kinds)
    assert_index_ranges(found, "ix_outbox_subject_kind_id")
    assert all(plan.startswith("SEARCH outbox") and "subject_id=? AND kind=?" in plan for plan in found), found


@pytest.mark.parametrize("province", ["", "620000"])
@pytest.mark.parametrize("after", [None, (AT, "b-0042")])
def test_a_page_of_bindings_is_one_index_range_per_state_and_side(sqlite_store: SqlStore, province: str,
                                                                  after: tuple[datetime, str] | None) -> None:
    found = plans(sqlite_store, lambda uow: uow.bindings.page(province, (), after, 101))
    # Every state, and with a province both its sides: each one range of the index for that filter.
    assert len(found) == len(BindingState) * (2 if province else 1)
    indexes = (["ix_bindings_giver_province_state_created_at", "ix_bindings_receiver_province_state_created_at"]
               if province else ["ix_bindings_state_created_at"])
    for plan in found:
        assert plan.startswith("SEARCH bindings") and "TEMP B-TREE" not in plan, plan
        assert any(f"USING INDEX {index} (" in plan for index in indexes), plan


@pytest.mark.parametrize("before", [None, (AT, "c-0042")])
def test_a_page_of_a_quotas_consumptions_is_one_index_range(sqlite_store: SqlStore,
                                                            before: tuple[datetime, str] | None) -> None:
    """InspectQuota and GetQuota: a binding's consumptions newest first, a page at a time."""
    found = plans(sqlite_store, lambda uow: uow.quotas.consumptions("b-1", before, 51))
    assert len(found) == 1
    assert_index_ranges(found, "ix_consumptions_binding_created_at")
    assert found[0].startswith("SEARCH consumptions"), found


def test_closing_a_clearing_month_reads_its_running_totals_only(sqlite_store: SqlStore) -> None:
    """The month's lines are one range of clearing_totals' key (month, pair, shard), in its order: never the
    consumptions, never a sort."""
    found = plans(sqlite_store, lambda uow: uow.settlements.clearing_lines("Q2026-05"))
    assert len(found) == 1 and "consumptions" not in found[0] and "reversals" not in found[0], found
    assert found[0].startswith("SEARCH clearing_totals USING INDEX"), found
    assert "(clearing_window_id=?)" in found[0] and "TEMP B-TREE" not in found[0], found


def test_a_windows_close_reads_its_kept_figures_not_its_transfers(sqlite_store: SqlStore) -> None:
    # The close holds the window's lock (on SQLite the write lock) while it reads them: every commit waits.
    found = plans(sqlite_store, lambda uow: uow.settlements.committed_pairs("2026-05-04"))
    # The primary key's range (SQLite names it its autoindex): pairs x shards rows.
    key = "sqlite_autoindex_settlement_totals_1 (window_id=?)"
    assert all(plan.startswith(f"SEARCH settlement_totals USING INDEX {key}") for plan in found), found


def _windows_with_figures(store: SqlStore, count: int) -> None:
    """`count` closed windows, each with two pairs' figures and one of its two provinces' acknowledgement."""
    with store.unit_of_work() as uow:
        connection = uow._connection.driver_connection  # type: ignore[attr-defined]
        for day in range(1, count + 1):
            window_id = f"2026-05-{day:02d}"
            at = datetime(2026, 5, day, tzinfo=UTC).isoformat(sep=" ")
            connection.execute("INSERT INTO settlement_windows VALUES (?, 'CLOSED', ?, ?, ?, ?)",
                               (window_id, at, at, at, at))
            for fr, to, gross in (("620000", "650000", day), ("650000", "620000", 100 * day)):
                connection.execute("INSERT INTO settlement_pairs (window_id, from_province, to_province, gross_fen, "
                                   "transfer_count, bank, serial_number) VALUES (?, ?, ?, ?, 1, '', '')",
                                   (window_id, fr, to, gross))
            for province, acknowledged in (("620000", at), ("650000", None)):
                connection.execute("INSERT INTO settlement_statements (window_id, province, figures_payload, "
                                   "figures_key_id, figures_alg, figures_signature, figures_sha256, acknowledged_at, "
                                   "ack_message_id, ack_key_id) VALUES (?, ?, x'00', 'k', 'ed25519', x'00', x'00', ?, "
                                   "'', '')", (window_id, province, acknowledged))
        uow.commit()


@pytest.mark.parametrize("limit", [1, 3, 7])
def test_a_page_of_windows_is_three_statements_whatever_its_size_and_each_as_read_alone(sqlite_store: SqlStore,
                                                                                        limit: int) -> None:
    """The dashboard reads two pages of windows every 2 s: their rows, then all their pairs and all their
    acknowledgements, each by the tables' keys; the windows are those read one at a time."""
    _windows_with_figures(sqlite_store, 6)
    found = plans(sqlite_store, lambda uow: uow.settlements.newest_first((), None, limit, clearing=False))
    assert len(found) == 3, found
    assert "TEMP B-TREE" not in found[0], found
    assert found[1].startswith("SEARCH settlement_pairs USING INDEX sqlite_autoindex_settlement_pairs_1"), found
    assert found[2].startswith("SEARCH settlement_statements USING INDEX"), found
    with sqlite_store.unit_of_work(read_only=True) as uow:
        page = uow.settlements.newest_first((), None, limit, clearing=False)
        one_by_one = [uow.settlements.get(f"2026-05-{day:02d}") for day in range(6, 6 - min(limit, 6), -1)]
    assert page == one_by_one and len(page) == min(limit, 6)
    assert all(len(window.pairs) == 2 and len(window.acknowledgements) == 1 for window in page)


def test_the_dashboards_newest_changes_are_the_events_key_read_backwards(sqlite_store: SqlStore) -> None:
    """One statement, however long the history: the events' key read from its end, each change's transfer
    found by its key; never a sort."""
    found = plans(sqlite_store, lambda uow: uow.transfers.newest_changes(50))
    assert len(found) == 1 and "TEMP B-TREE" not in found[0], found
    assert found[0].startswith("SCAN transfer_events"), found
    assert "SEARCH transfers USING INDEX sqlite_autoindex_transfers_1 (transfer_id=?)" in found[0], found


def test_every_index_of_the_transfers_is_read_by_a_statement(sqlite_store: SqlStore) -> None:
    """An index costs every insert and every state change of a transfer a write (on PostgreSQL a state change is
    never heap-only: `state` is indexed), and at millions of rows a page a write: each must serve a read. The
    reads of transfers by anything but their key: the operators' pages, the return and delivery sweeps."""
    found = [plan for read in (lambda uow: uow.transfers.page(TransferFilter(), None, 101, newest_first=True),
                               lambda uow: uow.transfers.page(TransferFilter(states=(TransferState.COMMITTED,)),
                                                              None, 101, newest_first=True),
                               lambda uow: uow.transfers.due_for_return(AT, 100),
                               lambda uow: uow.transfers.undelivered_past_deadline(AT, 100))
             for plan in plans(sqlite_store, read)]
    indexes = {index["name"] for index in inspect(sqlite_store.engine).get_indexes("transfers")}
    assert indexes, "the transfers have no index besides their key"
    read = " / ".join(found)
    assert not {index for index in indexes if not re.search(rf"USING (COVERING )?INDEX {index}\b", read)}, found
