"""staff sessions end at sign-out: the account's session generation

Revision ID: c6d2a9e4f1b8
Revises: b3f1e6a8c2d5
Create Date: 2026-12-07 08:30:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = 'c6d2a9e4f1b8'
down_revision = 'b3f1e6a8c2d5'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('staff_user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_generation', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('staff_user', schema=None) as batch_op:
        batch_op.drop_column('session_generation')
