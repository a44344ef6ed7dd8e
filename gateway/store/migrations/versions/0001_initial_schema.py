"""The initial schema: gateway/store/tables.py as it was when migrations began (issue 5).

Created 2026-11-22.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table('bindings',
        sa.Column('binding_id', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.String(length=64), nullable=False),
        sa.Column('giver_province', sa.String(length=6), nullable=False),
        sa.Column('receiver_province', sa.String(length=6), nullable=False),
        sa.Column('giver_ref', sa.LargeBinary(length=32), nullable=False),
        sa.Column('receiver_ref', sa.LargeBinary(length=32), nullable=False),
        sa.Column('giver_id_masked', sa.String(length=18), nullable=False),
        sa.Column('receiver_id_masked', sa.String(length=18), nullable=False),
        sa.Column('relation_code', sa.String(length=2), nullable=False),
        sa.Column('authorised_amount_fen', sa.BigInteger(), nullable=False),
        sa.Column('used_amount_fen', sa.BigInteger(), nullable=False),
        sa.Column('receiver_birth_date', sa.Date(), nullable=False),
        sa.Column('consent_by', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('attestation_method', sa.String(length=32), nullable=False),
        sa.Column('evidence_ref', sa.String(length=128), nullable=False),
        sa.Column('attested_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('proposal_sha256', sa.LargeBinary(length=32), nullable=False),
        sa.Column('proposal_payload', sa.LargeBinary(), nullable=False),
        sa.Column('proposal_signer', sa.String(length=16), nullable=False),
        sa.Column('proposal_key_id', sa.String(length=64), nullable=False),
        sa.Column('proposal_alg', sa.String(length=16), nullable=False),
        sa.Column('proposal_signature', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('binding_id')
    )
    op.create_index(op.f('ix_bindings_giver_ref'), 'bindings', ['giver_ref'])
    op.create_index(op.f('ix_bindings_receiver_ref'), 'bindings', ['receiver_ref'])
    op.create_index('ix_bindings_state_consent_by', 'bindings', ['state', 'consent_by'])
    op.create_table('giver_days',
        sa.Column('giver_ref', sa.LargeBinary(length=32), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('giver_ref', 'day')
    )
    op.create_table('member_suspensions',
        sa.Column('person_ref', sa.LargeBinary(length=32), nullable=False),
        sa.Column('province', sa.String(length=6), nullable=False),
        sa.Column('since', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('person_ref')
    )
    op.create_table('outbox',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('destination', sa.String(length=6), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('message_id', sa.String(length=128), nullable=False),
        sa.Column('subject_id', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_error', sa.String(length=128), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('destination', 'message_id', name='uq_outbox_destination_message')
    )
    op.create_index('ix_outbox_status_next_attempt', 'outbox', ['status', 'next_attempt_at'])
    op.create_table('province_keys',
        sa.Column('key_id', sa.String(length=64), nullable=False),
        sa.Column('province_code', sa.String(length=6), nullable=False),
        sa.Column('alg', sa.String(length=16), nullable=False),
        sa.Column('public_key', sa.LargeBinary(), nullable=False),
        sa.Column('valid_from', sa.DateTime(timezone=True), nullable=True),
        sa.Column('valid_until', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('key_id')
    )
    op.create_index(op.f('ix_province_keys_province_code'), 'province_keys', ['province_code'])
    op.create_table('provinces',
        sa.Column('code', sa.String(length=6), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('endpoint', sa.String(length=255), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('policy_json', sa.Text(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('code')
    )
    op.create_table('requests',
        sa.Column('sender', sa.String(length=16), nullable=False),
        sa.Column('message_id', sa.String(length=64), nullable=False),
        sa.Column('payload_type', sa.String(length=128), nullable=False),
        sa.Column('payload_sha256', sa.LargeBinary(length=32), nullable=False),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('response', sa.LargeBinary(), nullable=True),
        sa.Column('error_kind', sa.String(length=32), nullable=True),
        sa.Column('error_reason', sa.String(length=64), nullable=True),
        sa.Column('error_field', sa.String(length=64), nullable=True),
        sa.Column('error_message', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('sender', 'message_id')
    )
    routing_version = op.create_table('routing_version',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id')
    )
    # The one row whose version moves with every routing-table change (caches compare it).
    op.bulk_insert(routing_version, [{'id': 1, 'version': 0}])
    op.create_table('settlement_pairs',
        sa.Column('window_id', sa.String(length=10), nullable=False),
        sa.Column('from_province', sa.String(length=6), nullable=False),
        sa.Column('to_province', sa.String(length=6), nullable=False),
        sa.Column('gross_fen', sa.BigInteger(), nullable=False),
        sa.Column('transfer_count', sa.BigInteger(), nullable=False),
        sa.Column('bank', sa.String(length=64), nullable=False),
        sa.Column('serial_number', sa.String(length=64), nullable=False),
        sa.Column('paid_on', sa.Date(), nullable=True),
        sa.Column('paid_recorded_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('window_id', 'from_province', 'to_province')
    )
    op.create_table('settlement_statements',
        sa.Column('window_id', sa.String(length=10), nullable=False),
        sa.Column('province', sa.String(length=6), nullable=False),
        sa.Column('figures_payload', sa.LargeBinary(), nullable=False),
        sa.Column('figures_key_id', sa.String(length=64), nullable=False),
        sa.Column('figures_alg', sa.String(length=16), nullable=False),
        sa.Column('figures_signature', sa.LargeBinary(), nullable=False),
        sa.Column('figures_sha256', sa.LargeBinary(length=32), nullable=False),
        sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('ack_message_id', sa.String(length=64), nullable=False),
        sa.Column('ack_payload', sa.LargeBinary(), nullable=True),
        sa.Column('ack_key_id', sa.String(length=64), nullable=False),
        sa.Column('ack_signature', sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint('window_id', 'province')
    )
    op.create_table('settlement_windows',
        sa.Column('window_id', sa.String(length=10), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('opens_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('closes_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('window_id')
    )
    op.create_table('transfer_events',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('transfer_id', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.String(length=64), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_transfer_events_transfer_id'), 'transfer_events', ['transfer_id'])
    op.create_table('transfers',
        sa.Column('transfer_id', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.String(length=64), nullable=False),
        sa.Column('giver_province', sa.String(length=6), nullable=False),
        sa.Column('receiver_province', sa.String(length=6), nullable=False),
        sa.Column('giver_ref', sa.LargeBinary(length=32), nullable=False),
        sa.Column('receiver_ref', sa.LargeBinary(length=32), nullable=False),
        sa.Column('giver_id_masked', sa.String(length=18), nullable=False),
        sa.Column('receiver_id_masked', sa.String(length=18), nullable=False),
        sa.Column('amount_fen', sa.BigInteger(), nullable=False),
        sa.Column('currency', sa.String(length=3), nullable=False),
        sa.Column('binding_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('return_deadline', sa.DateTime(timezone=True), nullable=False),
        sa.Column('delivery_deadline', sa.DateTime(timezone=True), nullable=False),
        sa.Column('instruction_sha256', sa.LargeBinary(length=32), nullable=False),
        sa.Column('instruction_payload', sa.LargeBinary(), nullable=False),
        sa.Column('instruction_signer', sa.String(length=16), nullable=False),
        sa.Column('instruction_key_id', sa.String(length=64), nullable=False),
        sa.Column('instruction_alg', sa.String(length=16), nullable=False),
        sa.Column('instruction_signature', sa.LargeBinary(), nullable=False),
        sa.Column('settlement_window_id', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('transfer_id')
    )
    op.create_index('ix_transfers_binding_id', 'transfers', ['binding_id'])
    op.create_index('ix_transfers_created_at', 'transfers', ['created_at'])
    op.create_index(op.f('ix_transfers_giver_ref'), 'transfers', ['giver_ref'])
    op.create_index('ix_transfers_giver_ref_created_at', 'transfers', ['giver_ref', 'created_at'])
    op.create_index(op.f('ix_transfers_receiver_ref'), 'transfers', ['receiver_ref'])
    op.create_index('ix_transfers_settlement_window_id', 'transfers', ['settlement_window_id'])
    op.create_index('ix_transfers_state_return_deadline', 'transfers', ['state', 'return_deadline'])


def downgrade() -> None:
    op.drop_table('transfers')
    op.drop_table('transfer_events')
    op.drop_table('settlement_windows')
    op.drop_table('settlement_statements')
    op.drop_table('settlement_pairs')
    op.drop_table('routing_version')
    op.drop_table('requests')
    op.drop_table('provinces')
    op.drop_table('province_keys')
    op.drop_table('outbox')
    op.drop_table('member_suspensions')
    op.drop_table('giver_days')
    op.drop_table('bindings')
