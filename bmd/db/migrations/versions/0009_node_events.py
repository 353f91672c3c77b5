"""bm_node_events: each node's bounded history (provision transitions, maintenance, power, errors)

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bm_node_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("bm_node_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=True),
        sa.Column("from_state", sa.String(length=32), nullable=True),
        sa.Column("to_state", sa.String(length=32), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("instance_uuid", sa.String(length=36), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["bm_node_id"], ["bm_nodes.id"], name="fk_bm_node_events_bm_node_id_bm_nodes", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_bm_node_events"),
        sqlite_autoincrement=True,
    )
    # The one index: a node's entries newest first (the API's page, the trim's cut-off) are a range of it.
    op.create_index("ix_bm_node_events_bm_node_id_id", "bm_node_events", ["bm_node_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_bm_node_events_bm_node_id_id", table_name="bm_node_events")
    op.drop_table("bm_node_events")
