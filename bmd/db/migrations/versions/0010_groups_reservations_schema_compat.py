"""several services on one database: node groups, per-node reservations, each service's groups and API URL,
and the schema-compatibility record a rolling upgrade reads

Revision ID: 0010
Revises: 0009

Additive only (columns with defaults, one new table), so a service one revision behind keeps running on it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None
# Additive: code at 0009 still runs on this schema (bmd.db.migrate.check_schema, README "Rolling upgrade").
compatible_down_to = "0009"


def upgrade() -> None:
    with op.batch_alter_table("bm_nodes") as batch:
        # Ironic's conductor_group: "" is the default group every service serves unless configured otherwise.
        batch.add_column(sa.Column("conductor_group", sa.String(length=255), nullable=False, server_default=""))
        # the service holding the node's hardware lock and since when (bmd.db.reservations)
        batch.add_column(sa.Column("reservation", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("reserved_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_bm_nodes_conductor_group", ["conductor_group"])
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("groups", sa.JSON(), nullable=False, server_default='[""]'))
        batch.add_column(sa.Column("api_url", sa.String(length=255), nullable=True))
    # One row per migrated revision: the oldest code head that still runs on the schema (bmd.db.migrate).
    op.create_table(
        "bmd_schema_compat",
        sa.Column("revision", sa.String(length=32), nullable=False),
        sa.Column("oldest_code", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("revision", name="pk_bmd_schema_compat"),
    )


def downgrade() -> None:
    op.drop_table("bmd_schema_compat")
    with op.batch_alter_table("services") as batch:
        batch.drop_column("api_url")
        batch.drop_column("groups")
    with op.batch_alter_table("bm_nodes") as batch:
        batch.drop_index("ix_bm_nodes_conductor_group")
        batch.drop_column("reserved_at")
        batch.drop_column("reservation")
        batch.drop_column("conductor_group")
