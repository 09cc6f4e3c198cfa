"""notices and their providers remember their last transient failure

Revision ID: d2c5e8a1f4b7
Revises: 7c177b5e3c99
Create Date: 2026-12-05 18:40:00.000000
"""
from alembic import op
import sqlalchemy as sa
import accident_service.db


revision = 'd2c5e8a1f4b7'
down_revision = '7c177b5e3c99'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('provider_failure',
    sa.Column('provider', sa.String(length=16), nullable=False),
    sa.Column('last_failure_at', accident_service.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('provider', name=op.f('pk_provider_failure'))
    )
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_failure_at', accident_service.db.UTCDateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_column('last_failure_at')
    op.drop_table('provider_failure')
