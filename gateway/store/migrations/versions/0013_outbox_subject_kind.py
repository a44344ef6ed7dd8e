"""The messages of one kind about one subject, newest first, as one index range.

Created 2026-12-06. `ix_outbox_subject_id` (subject_id) becomes `ix_outbox_subject_kind_id` (subject_id, kind, id):
a binding's quota gets two notices per draw, and InspectQuota / InspectBinding / InspectTransfer read the newest
few of the kinds they show, not every message ever written about the subject. Expiring a delivery (kind and
subject) uses it too.
"""

from __future__ import annotations

from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index('ix_outbox_subject_kind_id', 'outbox', ['subject_id', 'kind', 'id'], unique=False)
    op.drop_index('ix_outbox_subject_id', table_name='outbox')


def downgrade() -> None:
    op.create_index('ix_outbox_subject_id', 'outbox', ['subject_id'], unique=False)
    op.drop_index('ix_outbox_subject_kind_id', table_name='outbox')
