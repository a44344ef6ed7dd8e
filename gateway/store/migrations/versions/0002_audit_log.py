"""The tamper-evident record (issue 5): the hash-chained audit log, its head, and signed checkpoints.

Created 2026-11-22.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table('audit_log',
        sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('subject_id', sa.String(length=64), nullable=False),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('prev_hash', sa.LargeBinary(length=32), nullable=False),
        sa.Column('entry_hash', sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint('seq')
    )
    audit_head = op.create_table('audit_head',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('head_hash', sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint('id')
    )
    # The chain starts empty, from 32 zero bytes (gateway/domain/audit.py GENESIS).
    op.bulk_insert(audit_head, [{'id': 1, 'size': 0, 'head_hash': bytes(32)}])
    op.create_table('audit_checkpoints',
        sa.Column('size', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('head_hash', sa.LargeBinary(length=32), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('payload', sa.LargeBinary(), nullable=False),
        sa.Column('key_id', sa.String(length=64), nullable=False),
        sa.Column('signature', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('size')
    )


def downgrade() -> None:
    op.drop_table('audit_checkpoints')
    op.drop_table('audit_head')
    op.drop_table('audit_log')
