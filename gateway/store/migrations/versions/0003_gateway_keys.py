"""The gateway's own signing keys, current and retiring (issue 5: key rotation).

Created 2026-11-22.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table('gateway_keys',
        sa.Column('key_id', sa.String(length=64), nullable=False),
        sa.Column('public_key', sa.LargeBinary(), nullable=False),
        sa.Column('valid_from', sa.DateTime(timezone=True), nullable=False),
        sa.Column('valid_until', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('key_id')
    )


def downgrade() -> None:
    op.drop_table('gateway_keys')
