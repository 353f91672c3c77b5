"""bm_nodes.boot_mode (bios | uefi), bm_nodes.root_device (Ironic's root-device hints), bm_nodes.deploy_steps
(the last deploy's steps with their timings)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch rebuild): a rebuilt SQLite table would lose the AUTOINCREMENT of 0004.
    op.add_column("bm_nodes", sa.Column("boot_mode", sa.String(length=8), server_default="bios", nullable=False))
    op.add_column("bm_nodes", sa.Column("root_device", sa.JSON(), nullable=True))
    op.add_column("bm_nodes", sa.Column("deploy_steps", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bm_nodes", schema=None) as batch_op:
        batch_op.drop_column("deploy_steps")
        batch_op.drop_column("root_device")
        batch_op.drop_column("boot_mode")
