"""ids are never reused: every SQLite table gets AUTOINCREMENT

Without AUTOINCREMENT SQLite hands out max(rowid) + 1, so deleting the newest node gives its id to the next
one and old log lines that name it by id then name two machines. SQLite cannot add AUTOINCREMENT to a table:
each is rebuilt (batch mode copies the rows, ids kept; sqlite_sequence starts at the highest). bmd.db.migrate
runs migrations with foreign-key enforcement off, so dropping the old parent table cascades to nothing,
and checks every reference afterwards. PostgreSQL's sequences never reuse a value: nothing to do there.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Parents before children, as the rebuild copies them.
TABLES = (
    "bm_nodes",
    "bm_interfaces",
    "bm_pxe_ips",
    "bm_deployments",
    "instance_types",
    "instance_type_extra_specs",
    "instances",
    "compute_nodes",
    "services",
)


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
