"""Settlement totals: each window's committed transfers by province pair, kept with every commit.

Created 2026-12-06. A window's close froze its figures from a GROUP BY over the window's transfers, holding the
window's lock (and on SQLite the write lock) meanwhile: every commit waited for a scan that grows with the
window. Now the figures are kept as each transfer is committed into its window, and the close reads them.
Filled from the rows as they stand (in shard 0).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table('settlement_totals',
        sa.Column('window_id', sa.String(length=10), nullable=False),
        sa.Column('giver_province', sa.String(length=6), nullable=False),
        sa.Column('receiver_province', sa.String(length=6), nullable=False),
        sa.Column('shard', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('count', sa.BigInteger(), nullable=False),
        sa.Column('amount_fen', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('window_id', 'giver_province', 'receiver_province', 'shard')
    )
    op.execute("INSERT INTO settlement_totals (window_id, giver_province, receiver_province, shard, count, amount_fen) "
               "SELECT settlement_window_id, giver_province, receiver_province, 0, count(*), sum(amount_fen) "
               "FROM transfers WHERE state = 'COMMITTED' AND settlement_window_id != '' "
               "GROUP BY settlement_window_id, giver_province, receiver_province")


def downgrade() -> None:
    op.drop_table('settlement_totals')
