"""bm_nodes.inspection (the last inspection report as the agent sent it) and bm_nodes.inspected_at

Revision ID: 0007
Revises: 0005 (the lead relinks it after 0006 when the branches are merged)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch rebuild): a rebuilt SQLite table would lose the AUTOINCREMENT of 0004.
    op.add_column("bm_nodes", sa.Column("inspection", sa.JSON(), nullable=True))
    op.add_column("bm_nodes", sa.Column("inspected_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bm_nodes", schema=None) as batch_op:
        batch_op.drop_column("inspected_at")
        batch_op.drop_column("inspection")
