"""bindings.receiver_birth_date goes: with the masked ID number it was the receiver's whole ID number (D19).

Created 2026-12-06. The age rule at acceptance (D6) reads the birth date from the sealed proposal instead.
On SQLite the table is rebuilt with secure_delete on, so the old pages are overwritten, not left in the file's
free list; on PostgreSQL the old values stay in dead tuples until `VACUUM FULL bindings` (README, "Personal data").
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        op.execute('PRAGMA secure_delete = ON')
    with op.batch_alter_table('bindings') as batch:
        batch.drop_column('receiver_birth_date')


def downgrade() -> None:
    # The dates cannot be recovered without the data keys: a downgraded database holds a placeholder.
    with op.batch_alter_table('bindings') as batch:
        batch.add_column(sa.Column('receiver_birth_date', sa.Date(), nullable=False,
                                   server_default=sa.text("'1900-01-01'")))
