"""A clearing month's frozen lines (Q10) as settlement pairs: the month's reversals beside its consumptions.

Created 2026-12-06. Two columns on settlement_pairs, 0 for every existing (transfers') window's pair.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table('settlement_pairs') as batch:
        batch.add_column(sa.Column('reversed_fen', sa.BigInteger(), server_default='0', nullable=False))
        batch.add_column(sa.Column('reversal_count', sa.BigInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('settlement_pairs') as batch:
        batch.drop_column('reversal_count')
        batch.drop_column('reversed_fen')
