"""The transfers' indexes that no statement reads, dropped.

Created 2026-12-07. Every insert and every state change of a transfer writes an entry into each of the table's
indexes (a state change is never a heap-only update on PostgreSQL: `state` is indexed), and at millions of rows a
randomly keyed index costs a page a write. No statement reads these five: a giver's day is counted in `giver_days`,
people are looked up in the bindings, and a window's close reads its kept figures. What stays: the key,
(state, return_deadline) for the return sweep, and the operators' two page orders
(tests/store/test_operator_read_plans.py checks that each is read).
"""

from __future__ import annotations

from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | None = None
depends_on: str | None = None

DROPPED = {'ix_transfers_giver_ref': ['giver_ref'], 'ix_transfers_receiver_ref': ['receiver_ref'],
           'ix_transfers_giver_ref_created_at': ['giver_ref', 'created_at'], 'ix_transfers_binding_id': ['binding_id'],
           'ix_transfers_settlement_window_id': ['settlement_window_id']}


def upgrade() -> None:
    for name in DROPPED:
        op.drop_index(name, table_name='transfers')


def downgrade() -> None:
    for name, columns in DROPPED.items():
        op.create_index(name, 'transfers', columns, unique=False)
