"""deliveries.claimed_by: which process holds an in-progress delivery's lease

Revision ID: 0003_integrity
Revises: 0002_audit_chain
Create Date: 2026-12-06 11:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003_integrity'
down_revision = '0002_audit_chain'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The holder of an in-progress row (dsm_node.liveness.HOLDER): a restarted node takes back
    # at once the leases its own dead predecessor held, instead of waiting for them to expire.
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('claimed_by')
