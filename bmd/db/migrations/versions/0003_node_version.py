"""bm_nodes.version: bumped by every write of the row, so the scheduler can tell a newer view of a node

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bm_nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("bm_nodes", schema=None) as batch_op:
        batch_op.drop_column("version")
