"""The record of VerifyRelation queries: who asked about whom (masked ID numbers only), when, the answer.

Created 2026-12-06.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table('relation_queries',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('asked_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('asking_province', sa.String(length=6), nullable=False),
        sa.Column('receiver_province', sa.String(length=6), nullable=False),
        sa.Column('message_id', sa.String(length=64), nullable=False),
        sa.Column('giver_id_masked', sa.String(length=18), nullable=False),
        sa.Column('receiver_id_masked', sa.String(length=18), nullable=False),
        sa.Column('relation_code', sa.String(length=2), nullable=False),
        sa.Column('answer', sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint('id')
    )
    # Pruning by age is the only read this table serves.
    op.create_index(op.f('ix_relation_queries_asked_at'), 'relation_queries', ['asked_at'])


def downgrade() -> None:
    op.drop_index(op.f('ix_relation_queries_asked_at'), table_name='relation_queries')
    op.drop_table('relation_queries')
