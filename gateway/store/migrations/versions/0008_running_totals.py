"""Running totals for the operators' reads: transfers by pair and state, each destination's outbox.

Created 2026-12-06. Filled from the rows as they stand (in shard 0); from then on every change keeps them.
Two indexes let the oldest undelivered message and the transfers of a state be read without a scan.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table('transfer_totals',
        sa.Column('giver_province', sa.String(length=6), nullable=False),
        sa.Column('receiver_province', sa.String(length=6), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('shard', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('count', sa.BigInteger(), nullable=False),
        sa.Column('amount_fen', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('giver_province', 'receiver_province', 'state', 'shard')
    )
    op.create_table('outbox_totals',
        sa.Column('destination', sa.String(length=6), nullable=False),
        sa.Column('shard', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('pending', sa.BigInteger(), nullable=False),
        sa.Column('attempts', sa.BigInteger(), nullable=False),
        sa.Column('done', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('destination', 'shard')
    )
    op.execute("INSERT INTO transfer_totals (giver_province, receiver_province, state, shard, count, amount_fen) "
               "SELECT giver_province, receiver_province, state, 0, count(*), sum(amount_fen) FROM transfers "
               "GROUP BY giver_province, receiver_province, state")
    op.execute("INSERT INTO outbox_totals (destination, shard, pending, attempts, done) "
               "SELECT destination, 0, sum(CASE WHEN status = 'PENDING' THEN 1 ELSE 0 END), sum(attempts), "
               "sum(CASE WHEN status = 'DONE' THEN 1 ELSE 0 END) FROM outbox GROUP BY destination")
    with op.batch_alter_table('outbox') as batch:
        batch.create_index('ix_outbox_status_created_at', ['status', 'created_at'], unique=False)
    with op.batch_alter_table('transfers') as batch:
        batch.create_index('ix_transfers_state_created_at', ['state', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('transfers') as batch:
        batch.drop_index('ix_transfers_state_created_at')
    with op.batch_alter_table('outbox') as batch:
        batch.drop_index('ix_outbox_status_created_at')
    op.drop_table('outbox_totals')
    op.drop_table('transfer_totals')
