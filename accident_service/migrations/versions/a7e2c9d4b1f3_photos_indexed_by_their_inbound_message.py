"""photos indexed by their inbound message: deleting old messages (retention) sets theirs to NULL

Revision ID: a7e2c9d4b1f3
Revises: f3b9d41c7a20
Create Date: 2026-12-06 03:20:00.000000
"""
from alembic import op


revision = 'a7e2c9d4b1f3'
down_revision = 'f3b9d41c7a20'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Without it, each inbound message deleted had its foreign key's ON DELETE SET NULL scan every photo
    # (3,000 messages among 200,000 photos: 46 s on PostgreSQL, 73 ms with the index).
    with op.batch_alter_table('photo', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_photo_inbound_message_id'), ['inbound_message_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('photo', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_photo_inbound_message_id'))
