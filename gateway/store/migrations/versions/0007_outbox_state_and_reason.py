"""outbox.state and outbox.reason: what an outcome notification tells is stored with it, not parsed from its id.

Created 2026-12-06. Rows already there are filled from their message ids (`out:<transfer>:<STATE>`,
`bout:<binding>:<STATE>:<time>`, the formats provinces de-duplicate on, which stay), and the reason from the
transfer or binding when it is still in that state: what the gateway sent for such a message until now.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | None = None
depends_on: str | None = None

_BATCH = 5000

outbox = sa.table('outbox', sa.column('id', sa.BigInteger()), sa.column('kind', sa.String()),
                  sa.column('message_id', sa.String()), sa.column('subject_id', sa.String()),
                  sa.column('state', sa.String()), sa.column('reason', sa.String()))
transfers = sa.table('transfers', sa.column('transfer_id', sa.String()), sa.column('state', sa.String()),
                     sa.column('reason', sa.String()))
bindings = sa.table('bindings', sa.column('binding_id', sa.String()), sa.column('state', sa.String()),
                    sa.column('reason', sa.String()))


def _transfer_state(message_id: str) -> str:
    return message_id.rsplit(':', 1)[-1]  # out:<transfer id, which may hold ':'>:<STATE>


def _binding_state(message_id: str) -> str:
    parts = message_id.split(':')  # bout:<binding id, which may hold ':'>:<STATE>:<time>
    return parts[-2] if len(parts) >= 4 else ''


def _fill(kind: str, subjects: sa.TableClause, subject_id: sa.ColumnClause[str],
          state_of: Callable[[str], str]) -> None:
    bind = op.get_bind()
    select = (sa.select(outbox.c.id, outbox.c.message_id, subjects.c.state, subjects.c.reason)
              .select_from(outbox.outerjoin(subjects, subject_id == outbox.c.subject_id))
              .where(outbox.c.kind == kind).order_by(outbox.c.id).limit(_BATCH))
    fill = (sa.update(outbox).where(outbox.c.id == sa.bindparam('row_id'))
            .values(state=sa.bindparam('told_state'), reason=sa.bindparam('told_reason')))
    last = -1
    while rows := bind.execute(select.where(outbox.c.id > last)).all():
        values = []
        for row_id, message_id, subject_state, subject_reason in rows:
            state = state_of(message_id)
            values.append({'row_id': row_id, 'told_state': state,
                           'told_reason': subject_reason if state and subject_state == state else ''})
        bind.execute(fill, values)
        last = rows[-1][0]


def upgrade() -> None:
    with op.batch_alter_table('outbox') as batch:
        batch.add_column(sa.Column('state', sa.String(length=16), server_default='', nullable=False))
        batch.add_column(sa.Column('reason', sa.String(length=64), server_default='', nullable=False))
    _fill('NOTIFY_TRANSFER_OUTCOME', transfers, transfers.c.transfer_id, _transfer_state)
    _fill('NOTIFY_BINDING_OUTCOME', bindings, bindings.c.binding_id, _binding_state)


def downgrade() -> None:
    # The message ids still say the state; the reason is read from the subject again, as before.
    with op.batch_alter_table('outbox') as batch:
        batch.drop_column('reason')
        batch.drop_column('state')
