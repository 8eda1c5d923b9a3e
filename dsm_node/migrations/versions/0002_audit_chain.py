"""audit hash chain: chain columns on audit_events, the audit_chain head, existing rows chained

Revision ID: 0002_audit_chain
Revises: 0001
Create Date: 2026-12-20 10:00:00
"""
from types import SimpleNamespace

import sqlalchemy as sa
from alembic import op

from dsm_node.audit_chain import GENESIS, HEAD_ID, row_hash
from dsm_node.db.models import UTCDateTime

revision = '0002_audit_chain'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chain_seq', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('chain_prev', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('chain_hash', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_audit_events_chain_seq'), ['chain_seq'], unique=True)
    op.create_table('audit_chain',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    # Chain the rows written before this revision, in the order they were written.
    events = sa.table(
        'audit_events', sa.column('id', sa.Integer()), sa.column('time', UTCDateTime()),
        sa.column('event_type', sa.String()), sa.column('event_code', sa.String()),
        sa.column('event_action', sa.String()), sa.column('outcome', sa.Integer()),
        sa.column('actor_ae', sa.String()), sa.column('actor_address', sa.String()),
        sa.column('study_uid', sa.String()), sa.column('series_uid', sa.String()), sa.column('detail', sa.JSON()),
        sa.column('chain_seq', sa.BigInteger()), sa.column('chain_prev', sa.String()), sa.column('chain_hash', sa.String()),
    )
    bind = op.get_bind()
    prev, seq = GENESIS, 0
    for row in bind.execute(sa.select(events).order_by(events.c.id)).all():
        seq += 1
        event = SimpleNamespace(**{**row._mapping, "chain_seq": seq})
        digest = row_hash(prev, event)
        bind.execute(events.update().where(events.c.id == row.id)
                     .values(chain_seq=seq, chain_prev=prev, chain_hash=digest))
        prev = digest
    chain = sa.table('audit_chain', sa.column('id', sa.Integer()), sa.column('seq', sa.BigInteger()),
                     sa.column('hash', sa.String()))
    op.bulk_insert(chain, [{'id': HEAD_ID, 'seq': seq, 'hash': prev}])


def downgrade() -> None:
    op.drop_table('audit_chain')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_chain_seq'))
        batch_op.drop_column('chain_hash')
        batch_op.drop_column('chain_prev')
        batch_op.drop_column('chain_seq')
