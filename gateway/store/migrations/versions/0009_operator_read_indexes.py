"""Indexes for the operators' reads: transfers newest or oldest first, a subject's outbox messages, bindings by
state and province newest first.

Created 2026-12-06. `ix_transfers_created_at` becomes (created_at, transfer_id) and `ix_transfers_state_created_at`
gains transfer_id too: a page in either order, all states or one, the id breaking ties, is one index range
without a sort. `ix_outbox_subject_id` finds the messages about one transfer
or binding (InspectTransfer, InspectBinding, and expiring a transfer's delivery) without a scan. The three
bindings indexes serve ListBindings: every filter it takes is one range of one of them, newest first.
"""

from __future__ import annotations

from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table('transfers') as batch:
        batch.drop_index('ix_transfers_created_at')
        batch.create_index('ix_transfers_created_at_transfer_id', ['created_at', 'transfer_id'], unique=False)
        batch.drop_index('ix_transfers_state_created_at')
        batch.create_index('ix_transfers_state_created_at', ['state', 'created_at', 'transfer_id'], unique=False)
    with op.batch_alter_table('outbox') as batch:
        batch.create_index('ix_outbox_subject_id', ['subject_id'], unique=False)
    with op.batch_alter_table('bindings') as batch:
        batch.create_index('ix_bindings_state_created_at', ['state', 'created_at', 'binding_id'], unique=False)
        batch.create_index('ix_bindings_giver_province_state_created_at',
                           ['giver_province', 'state', 'created_at', 'binding_id'], unique=False)
        batch.create_index('ix_bindings_receiver_province_state_created_at',
                           ['receiver_province', 'state', 'created_at', 'binding_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('bindings') as batch:
        batch.drop_index('ix_bindings_receiver_province_state_created_at')
        batch.drop_index('ix_bindings_giver_province_state_created_at')
        batch.drop_index('ix_bindings_state_created_at')
    with op.batch_alter_table('outbox') as batch:
        batch.drop_index('ix_outbox_subject_id')
    with op.batch_alter_table('transfers') as batch:
        batch.drop_index('ix_transfers_state_created_at')
        batch.create_index('ix_transfers_state_created_at', ['state', 'created_at'], unique=False)
        batch.drop_index('ix_transfers_created_at_transfer_id')
        batch.create_index('ix_transfers_created_at', ['created_at'], unique=False)
