"""agent tokens, encrypted image refs, last known boot device

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bm_deployments", schema=None) as batch_op:
        # When bmd powered the node on to boot this deploy's ramdisk: no agent token before that.
        batch_op.add_column(sa.Column("booted_at", sa.DateTime(timezone=True), nullable=True))
        # SHA-256 of the agent token (never the token), when it was issued and to which address.
        batch_op.add_column(sa.Column("agent_token_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("agent_token_issued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("agent_address", sa.String(length=64), nullable=True))
    with op.batch_alter_table("instances", schema=None) as batch_op:
        # Fernet-encrypted JSON of the refs that carried credentials ({"image_ref": "http://u:p@..."});
        # image_ref and deploy_info hold only their redacted form.
        batch_op.add_column(sa.Column("secret_refs", sa.Text(), nullable=True))
    with op.batch_alter_table("bm_nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("boot_device", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("boot_device_persistent", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("boot_device_checked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bm_nodes", schema=None) as batch_op:
        batch_op.drop_column("boot_device_checked_at")
        batch_op.drop_column("boot_device_persistent")
        batch_op.drop_column("boot_device")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("secret_refs")
    with op.batch_alter_table("bm_deployments", schema=None) as batch_op:
        batch_op.drop_column("agent_address")
        batch_op.drop_column("agent_token_issued_at")
        batch_op.drop_column("agent_token_hash")
        batch_op.drop_column("booted_at")
