"""The quota regime (Q2-Q10): quotas per binding, their changes, consumptions, reversals, and running totals per
ordered province pair and per clearing month.

Created 2026-12-06. New tables only: nothing existing changes. The totals start empty, as there are no quotas yet;
every change keeps them from then on, in its own transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table('clearing_totals',
    sa.Column('clearing_window_id', sa.String(length=10), nullable=False),
    sa.Column('giver_province', sa.String(length=6), nullable=False),
    sa.Column('receiver_province', sa.String(length=6), nullable=False),
    sa.Column('shard', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('consumed_fen', sa.BigInteger(), nullable=False),
    sa.Column('reversed_fen', sa.BigInteger(), nullable=False),
    sa.Column('consumption_count', sa.BigInteger(), nullable=False),
    sa.Column('reversal_count', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('clearing_window_id', 'giver_province', 'receiver_province', 'shard')
    )
    op.create_table('consumption_reversals',
    sa.Column('sender', sa.String(length=6), nullable=False),
    sa.Column('message_id', sa.String(length=64), nullable=False),
    sa.Column('consumption_id', sa.String(length=64), nullable=False),
    sa.Column('binding_id', sa.String(length=64), nullable=False),
    sa.Column('amount_fen', sa.BigInteger(), nullable=False),
    sa.Column('released_fen', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('clearing_window_id', sa.String(length=10), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sender', 'message_id')
    )
    op.create_table('consumptions',
    sa.Column('receiver_province', sa.String(length=6), nullable=False),
    sa.Column('consumption_id', sa.String(length=64), nullable=False),
    sa.Column('settlement_ref', sa.String(length=64), nullable=False),
    sa.Column('binding_id', sa.String(length=64), nullable=False),
    sa.Column('giver_province', sa.String(length=6), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('requested_fen', sa.BigInteger(), nullable=False),
    sa.Column('drawn_fen', sa.BigInteger(), nullable=False),
    sa.Column('reversed_fen', sa.BigInteger(), nullable=False),
    sa.Column('clearing_window_id', sa.String(length=10), nullable=False),
    sa.Column('care_pooling_area', sa.String(length=6), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('receiver_province', 'consumption_id'),
    sa.UniqueConstraint('receiver_province', 'settlement_ref', name='uq_consumptions_province_settlement_ref')
    )
    with op.batch_alter_table('consumptions', schema=None) as batch_op:
        batch_op.create_index('ix_consumptions_binding_created_at', ['binding_id', 'created_at', 'consumption_id'],
                              unique=False)

    op.create_table('quota_changes',
    sa.Column('binding_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('change', sa.String(length=16), nullable=False),
    sa.Column('amount_fen', sa.BigInteger(), nullable=False),
    sa.Column('released_fen', sa.BigInteger(), nullable=False),
    sa.Column('granted_after_fen', sa.BigInteger(), nullable=False),
    sa.Column('consumed_after_fen', sa.BigInteger(), nullable=False),
    sa.Column('released_after_fen', sa.BigInteger(), nullable=False),
    sa.Column('cause_id', sa.String(length=64), nullable=False),
    sa.Column('consumption_id', sa.String(length=64), nullable=False),
    sa.Column('consumption_reversed_fen', sa.BigInteger(), nullable=False),
    sa.Column('clearing_window_id', sa.String(length=10), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('binding_id', 'version')
    )
    op.create_table('quota_totals',
    sa.Column('giver_province', sa.String(length=6), nullable=False),
    sa.Column('receiver_province', sa.String(length=6), nullable=False),
    sa.Column('shard', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('granted_fen', sa.BigInteger(), nullable=False),
    sa.Column('consumed_fen', sa.BigInteger(), nullable=False),
    sa.Column('released_fen', sa.BigInteger(), nullable=False),
    sa.Column('consumption_count', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('giver_province', 'receiver_province', 'shard')
    )
    op.create_table('quotas',
    sa.Column('binding_id', sa.String(length=64), nullable=False),
    sa.Column('giver_province', sa.String(length=6), nullable=False),
    sa.Column('receiver_province', sa.String(length=6), nullable=False),
    sa.Column('granted_fen', sa.BigInteger(), nullable=False),
    sa.Column('consumed_fen', sa.BigInteger(), nullable=False),
    sa.Column('released_fen', sa.BigInteger(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('binding_id')
    )


def downgrade() -> None:
    op.drop_table('quotas')
    op.drop_table('quota_totals')
    op.drop_table('quota_changes')
    with op.batch_alter_table('consumptions', schema=None) as batch_op:
        batch_op.drop_index('ix_consumptions_binding_created_at')

    op.drop_table('consumptions')
    op.drop_table('consumption_reversals')
    op.drop_table('clearing_totals')
