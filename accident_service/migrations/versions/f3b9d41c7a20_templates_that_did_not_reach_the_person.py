"""notices remember the platform's msgid of a template; a person's templates that did not reach them

Revision ID: f3b9d41c7a20
Revises: d2c5e8a1f4b7
Create Date: 2026-12-05 21:20:00.000000
"""
from alembic import op
import sqlalchemy as sa
import accident_service.db


revision = 'f3b9d41c7a20'
down_revision = 'd2c5e8a1f4b7'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.add_column(sa.Column('platform_msgid', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('wechat_allowance', schema=None) as batch_op:
        batch_op.add_column(sa.Column('templates_failed_at', accident_service.db.UTCDateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('wechat_allowance', schema=None) as batch_op:
        batch_op.drop_column('templates_failed_at')
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_column('platform_msgid')
