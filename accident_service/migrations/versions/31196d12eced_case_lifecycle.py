"""case lifecycle: one open case per driver, offers per party, confirmations, outcome

Revision ID: 31196d12eced
Revises: 3141323e9072
Create Date: 2026-12-02 15:00:31.717003
"""
from alembic import op
import sqlalchemy as sa
import accident_service.db
from sqlalchemy.dialects import sqlite

revision = '31196d12eced'
down_revision = '3141323e9072'
branch_labels = None
depends_on = None

OPEN = "('draft', 'ready', 'booked', 'confirmed', 'checked_in', 'retake_requested')"


def upgrade() -> None:
    with op.batch_alter_table('accident_case', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('liability', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('outcome_note', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('handled_by', sa.String(length=64), nullable=True))

    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('checked_in_at', accident_service.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('completed_at', accident_service.db.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('party', schema=None) as batch_op:
        batch_op.add_column(sa.Column('case_open', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('retake_due_at', accident_service.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('offered_slot_ids', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('offered_at', accident_service.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('pending_action', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('pending_action_until', accident_service.db.UTCDateTime(timezone=True), nullable=True))

    # Parties of open cases are open; a driver found in several open cases (possible before this
    # revision) stays open only in the newest, so the unique index below can be built.
    op.execute(f"""
        UPDATE party SET case_open = true
        WHERE case_id IN (SELECT id FROM accident_case WHERE status IN {OPEN})
          AND case_id = (SELECT max(p2.case_id) FROM party p2 JOIN accident_case c2 ON c2.id = p2.case_id
                         WHERE p2.openid = party.openid AND c2.status IN {OPEN})""")
    # The reporter held the offers until now.
    op.execute("""
        UPDATE party SET offered_slot_ids = (SELECT offered_slot_ids FROM accident_case WHERE accident_case.id = party.case_id),
                         offered_at = (SELECT offered_at FROM accident_case WHERE accident_case.id = party.case_id)
        WHERE role = 'A'""")

    with op.batch_alter_table('party', schema=None) as batch_op:
        batch_op.create_index('uq_party_open_openid', ['openid'], unique=True, postgresql_where=sa.text('case_open'),
                              sqlite_where=sa.text('case_open'))
    with op.batch_alter_table('accident_case', schema=None) as batch_op:
        batch_op.drop_column('offered_at')
        batch_op.drop_column('offered_slot_ids')


def downgrade() -> None:
    with op.batch_alter_table('accident_case', schema=None) as batch_op:
        batch_op.add_column(sa.Column('offered_slot_ids', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('offered_at', accident_service.db.UTCDateTime(timezone=True), nullable=True))
    op.execute("""
        UPDATE accident_case SET offered_slot_ids = (SELECT offered_slot_ids FROM party
                                                     WHERE party.case_id = accident_case.id AND party.role = 'A'),
                                 offered_at = (SELECT offered_at FROM party
                                               WHERE party.case_id = accident_case.id AND party.role = 'A')""")
    with op.batch_alter_table('party', schema=None) as batch_op:
        batch_op.drop_index('uq_party_open_openid', postgresql_where=sa.text('case_open'), sqlite_where=sa.text('case_open'))
        batch_op.drop_column('pending_action_until')
        batch_op.drop_column('pending_action')
        batch_op.drop_column('offered_at')
        batch_op.drop_column('offered_slot_ids')
        batch_op.drop_column('retake_due_at')
        batch_op.drop_column('case_open')

    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.drop_column('completed_at')
        batch_op.drop_column('checked_in_at')

    with op.batch_alter_table('accident_case', schema=None) as batch_op:
        batch_op.drop_column('handled_by')
        batch_op.drop_column('outcome_note')
        batch_op.drop_column('liability')
        batch_op.drop_column('version')
