"""api tokens and idempotency keys: integrations on /api/v1, retried POSTs answered once; cases paged by update

Revision ID: 7c177b5e3c99
Revises: 54b871777a33
Create Date: 2026-12-02 15:49:28.569821
"""
from alembic import op
import sqlalchemy as sa
import accident_service.db


revision = '7c177b5e3c99'
down_revision = '54b871777a33'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('idempotency_key',
    sa.Column('owner', sa.String(length=80), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response_body', sa.JSON(), nullable=False),
    sa.Column('created_at', accident_service.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', accident_service.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('owner', 'key', name=op.f('pk_idempotency_key'))
    )
    with op.batch_alter_table('idempotency_key', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_key_expires_at'), ['expires_at'], unique=False)

    op.create_table('api_token',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=48), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.Enum('read', 'write', name='tokenscope', native_enum=False, length=8), nullable=False),
    sa.Column('station_id', sa.Integer(), nullable=True),
    sa.Column('created_at', accident_service.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', accident_service.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', accident_service.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['station_id'], ['station.id'], name=op.f('fk_api_token_station_id_station'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_token')),
    sa.UniqueConstraint('name', name=op.f('uq_api_token_name')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_token_token_hash'))
    )
    with op.batch_alter_table('accident_case', schema=None) as batch_op:
        batch_op.create_index('ix_accident_case_updated', ['updated_at', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('accident_case', schema=None) as batch_op:
        batch_op.drop_index('ix_accident_case_updated')

    op.drop_table('api_token')
    with op.batch_alter_table('idempotency_key', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_key_expires_at'))

    op.drop_table('idempotency_key')
