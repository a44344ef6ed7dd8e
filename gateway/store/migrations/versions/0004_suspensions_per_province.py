"""A suspension belongs to the province that reported it (D20): member_suspensions keyed by person and province.

Created 2026-11-22. Primary keys cannot be altered in SQLite, so the table is rebuilt and its rows copied.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = "person_ref, province, since"


def _rebuild(primary_key: list[str], copy: str) -> None:
    op.rename_table('member_suspensions', 'member_suspensions_old')
    if op.get_bind().dialect.name == 'postgresql':  # the old key's name must be free for the new one
        op.execute('ALTER TABLE member_suspensions_old '
                   'RENAME CONSTRAINT member_suspensions_pkey TO member_suspensions_old_pkey')
    op.create_table('member_suspensions',
        sa.Column('person_ref', sa.LargeBinary(length=32), nullable=False),
        sa.Column('province', sa.String(length=6), nullable=False),
        sa.Column('since', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(*primary_key, name='member_suspensions_pkey')
    )
    op.execute(f'INSERT INTO member_suspensions ({_COLUMNS}) {copy}')
    op.drop_table('member_suspensions_old')


def upgrade() -> None:
    _rebuild(['person_ref', 'province'], f'SELECT {_COLUMNS} FROM member_suspensions_old')


def downgrade() -> None:
    # One row per person again: the earliest province's suspension is kept.
    _rebuild(['person_ref'], 'SELECT person_ref, MIN(province), MIN(since) FROM member_suspensions_old '
                             'GROUP BY person_ref')
