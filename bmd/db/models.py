"""SQLAlchemy 2.0 typed models. Table and column names follow Nova's 2013 bare-metal driver.

The seed's columns are all here (``bm_nodes``, ``bm_pxe_ips``, ``bm_interfaces``, ``bm_deployments``,
``instance_types``, ``instance_type_extra_specs``, ``instances``, ``compute_nodes``, ``services``); the
extra ones (uuid, name, power and provision state, maintenance, per-node extra specs, timestamps) are
bmd's. Changing anything here needs an Alembic revision in ``bmd/db/migrations/versions``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on the way in and out, whatever the backend stores (SQLite keeps naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class UTCText(TypeDecorator[str]):
    """A UTC column read as the text an API answer carries for it (``str`` of the aware datetime, what
    ``json.dumps(..., default=str)`` writes): a big page read through it encodes no datetime, which is a
    third of encoding it (``bmd.db.nodes.list_nodes``). Read-only: select through ``type_coerce``."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> None:
        raise TypeError("UTCText only reads: write through the column's own type")

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], str | None]:
        """One plain function a value (TypeDecorator's own costs two more Python calls), and on SQLite the
        stored text itself when it is in SQLAlchemy's own storage format (``2026-12-02 06:27:42.123456``, what
        every write through the ORM or Core stores): ``str`` of the parsed datetime is that text and the
        offset, without the microseconds when they are 0. Building the datetime, moving it to UTC and
        formatting it was ~2 µs a value; that is most of reading a big page."""
        parse = self.impl_instance.result_processor(dialect, coltype)  # SQLite: text to naive datetime
        utc = dt.UTC

        def shown(value: dt.datetime) -> str:
            if value.tzinfo is None:
                return str(value.replace(tzinfo=utc))
            return str(value if value.tzinfo is utc else value.astimezone(utc))

        if parse is None:  # the driver gives datetimes (asyncpg: aware, in UTC)
            return lambda value: None if value is None else shown(value)

        def process(value: Any) -> str | None:
            parsed = None if value is None else parse(value)  # also the check that it is a timestamp at all
            if parsed is None:
                return None
            if isinstance(value, str) and len(value) == 26 and value[10] == " " and value[19] == ".":
                return (value[:19] if value.endswith(".000000") else value) + "+00:00"
            return shown(parsed)

        return process


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

intpk = Annotated[int, mapped_column(Integer, primary_key=True, autoincrement=True)]
str36 = Annotated[str, mapped_column(String(36))]
str255 = Annotated[str, mapped_column(String(255))]
timestamp = Annotated[dt.datetime, mapped_column(UTCDateTime, default=utcnow)]
JSONDict = Annotated[dict[str, Any], mapped_column(JSON, default=dict)]


# SQLite's AUTOINCREMENT: the id of a deleted row is never handed out again (without it SQLite reuses the
# highest one), so an id in an old log line names one machine for ever. PostgreSQL's sequences never reuse.
NEVER_REUSE_IDS: dict[str, Any] = {"sqlite_autoincrement": True}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON}


class Timestamps:
    created_at: Mapped[timestamp]
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class BareMetalNode(Timestamps, Base):
    __tablename__ = "bm_nodes"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[intpk]
    uuid: Mapped[str36] = mapped_column(unique=True)
    name: Mapped[str | None] = mapped_column(String(255), unique=True)
    service_host: Mapped[str255] = mapped_column(index=True)
    # Ironic's conductor_group: only the services that serve the group own the node ("" by default).
    conductor_group: Mapped[str255] = mapped_column(index=True, default="", server_default=text("''"))
    # The hardware lock: the service acting on the node now, and since when (bmd.db.reservations).
    reservation: Mapped[str | None] = mapped_column(String(255))
    reserved_at: Mapped[dt.datetime | None]
    instance_uuid: Mapped[str | None] = mapped_column(String(36), unique=True)
    cpus: Mapped[int]
    memory_mb: Mapped[int]
    local_gb: Mapped[int]
    pm_driver: Mapped[str] = mapped_column(String(32), default="ipmi")
    pm_address: Mapped[str | None] = mapped_column(String(255))
    pm_user: Mapped[str | None] = mapped_column(String(255))
    pm_password: Mapped[str | None] = mapped_column(Text)  # Fernet token, never the clear text
    prov_mac_address: Mapped[str | None] = mapped_column(String(17), unique=True)
    registration_status: Mapped[str] = mapped_column(String(16), default="done")
    task_state: Mapped[str | None] = mapped_column(String(255))
    prov_vlan_id: Mapped[int | None]
    terminal_port: Mapped[int | None]
    # bmd's additions
    power_state: Mapped[str | None] = mapped_column(String(16))
    last_power_check: Mapped[dt.datetime | None]
    power_failures: Mapped[int] = mapped_column(default=0)
    last_power_error: Mapped[str | None] = mapped_column(Text)
    provision_state: Mapped[str] = mapped_column(String(16), default="available", index=True)
    provision_updated_at: Mapped[dt.datetime | None]
    deploy_deadline: Mapped[dt.datetime | None]
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False)
    maintenance_reason: Mapped[str | None] = mapped_column(Text)
    maintenance_set_by: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)
    extra_specs: Mapped[JSONDict]
    # The boot device last read from or set on the BMC (served to anonymous readers with its age).
    boot_device: Mapped[str | None] = mapped_column(String(16))
    boot_device_persistent: Mapped[bool | None]
    boot_device_checked_at: Mapped[dt.datetime | None]
    # How the node's firmware boots: "bios" or "uefi" (chooses the PXE path; capability ``boot_mode``).
    boot_mode: Mapped[str] = mapped_column(String(8), default="bios", server_default=text("'bios'"))
    # Ironic's root-device hints (size in GiB, model, vendor, serial, wwn, name): which disk the agent writes.
    root_device: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The last deploy's steps, each {"step", "started_at", "seconds", "ok"} (see bmd.provision.records).
    deploy_steps: Mapped[list[Any] | None] = mapped_column(JSON)
    # The last inspection report, as validated (bmd.inspection.report), and when it was applied.
    inspection: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    inspected_at: Mapped[dt.datetime | None]
    # Bumped by every UPDATE of the row (ORM flush or Core statement), so a reader can tell which of two
    # views of a node is newer (the scheduler's host feed, bmd.node_events); timestamps can tie. One write
    # keeps it: sync_power_states stamping last_power_check on a node read as it was (nothing else moved),
    # so the passes that read only the nodes whose version moved stay proportional to change.
    version: Mapped[int] = mapped_column(
        Integer, default=1, server_default=text("1"), onupdate=literal_column("version") + 1
    )

    interfaces: Mapped[list[Interface]] = relationship(
        back_populates="node", lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )


class Interface(Timestamps, Base):
    __tablename__ = "bm_interfaces"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[intpk]
    bm_node_id: Mapped[int] = mapped_column(ForeignKey("bm_nodes.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(17), unique=True)
    datapath_id: Mapped[str | None] = mapped_column(String(255))
    port_no: Mapped[int | None]
    vif_uuid: Mapped[str | None] = mapped_column(String(36), unique=True)

    node: Mapped[BareMetalNode] = relationship(back_populates="interfaces", lazy="raise")


class PxeIp(Timestamps, Base):
    __tablename__ = "bm_pxe_ips"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[intpk]
    address: Mapped[str] = mapped_column(String(255), unique=True)
    server_address: Mapped[str] = mapped_column(String(255), unique=True)
    bm_node_id: Mapped[int | None] = mapped_column(ForeignKey("bm_nodes.id", ondelete="SET NULL"), unique=True)


class NodeEvent(Base):
    """One entry of a node's history (``bmd.node_history``): a provision transition, maintenance set or
    lifted, a power change or fault, an error written on the node. Bounded per node; goes with the node."""

    __tablename__ = "bm_node_events"
    __table_args__ = (Index("ix_bm_node_events_bm_node_id_id", "bm_node_id", "id"), NEVER_REUSE_IDS)

    id: Mapped[intpk]
    bm_node_id: Mapped[int] = mapped_column(ForeignKey("bm_nodes.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16))
    event: Mapped[str | None] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)
    instance_uuid: Mapped[str | None] = mapped_column(String(36))
    actor: Mapped[str | None] = mapped_column(String(64))


class Deployment(Timestamps, Base):
    __tablename__ = "bm_deployments"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[intpk]
    key: Mapped[str] = mapped_column(String(255))
    image_path: Mapped[str | None] = mapped_column(String(255))
    pxe_config_path: Mapped[str | None] = mapped_column(String(255))
    root_mb: Mapped[int] = mapped_column(default=0)
    swap_mb: Mapped[int] = mapped_column(default=0)
    bm_node_id: Mapped[int | None] = mapped_column(ForeignKey("bm_nodes.id", ondelete="CASCADE"), unique=True)
    instance_uuid: Mapped[str | None] = mapped_column(String(36))
    image_ref: Mapped[str | None] = mapped_column(Text)  # redacted: never credentials
    # The agent-token protocol (see bmd.drivers.deploy): bmd powered the node on at booted_at; the token's SHA-256,
    # when it was issued and to which address. A token is issued once per boot and dies with the row.
    booted_at: Mapped[dt.datetime | None]
    agent_token_hash: Mapped[str | None] = mapped_column(String(64))
    agent_token_issued_at: Mapped[dt.datetime | None]
    agent_address: Mapped[str | None] = mapped_column(String(64))


class InstanceType(Timestamps, Base):
    __tablename__ = "instance_types"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(255), unique=True)
    flavorid: Mapped[str] = mapped_column(String(255), unique=True)
    memory_mb: Mapped[int]
    vcpus: Mapped[int]
    root_gb: Mapped[int] = mapped_column(default=0)
    ephemeral_gb: Mapped[int] = mapped_column(default=0)
    swap: Mapped[int] = mapped_column(default=0)
    rxtx_factor: Mapped[float] = mapped_column(default=1.0)
    is_public: Mapped[bool] = mapped_column(default=True)
    disabled: Mapped[bool] = mapped_column(default=False)

    extra_specs: Mapped[list[InstanceTypeExtraSpec]] = relationship(
        lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )


class InstanceTypeExtraSpec(Timestamps, Base):
    __tablename__ = "instance_type_extra_specs"
    __table_args__ = (UniqueConstraint("instance_type_id", "key"), NEVER_REUSE_IDS)

    id: Mapped[intpk]
    instance_type_id: Mapped[int] = mapped_column(ForeignKey("instance_types.id", ondelete="CASCADE"))
    key: Mapped[str255]
    value: Mapped[str | None] = mapped_column(String(255))


class Instance(Timestamps, Base):
    __tablename__ = "instances"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[intpk]
    uuid: Mapped[str36] = mapped_column(unique=True)
    instance_type_id: Mapped[int | None] = mapped_column(ForeignKey("instance_types.id", ondelete="SET NULL"))
    flavor_name: Mapped[str | None] = mapped_column(String(255))
    reservation_id: Mapped[str | None] = mapped_column(String(36), index=True)
    host: Mapped[str | None] = mapped_column(String(255))
    node: Mapped[str | None] = mapped_column(String(255))
    bm_node_id: Mapped[int | None] = mapped_column(ForeignKey("bm_nodes.id", ondelete="SET NULL"), index=True)
    vm_state: Mapped[str] = mapped_column(String(32), default="building")
    task_state: Mapped[str | None] = mapped_column(String(32))
    image_ref: Mapped[str | None] = mapped_column(Text)  # redacted when it carried credentials
    # Fernet-encrypted JSON of the refs that carried credentials, e.g. {"image_ref": "http://u:p@h/x?sig=.."}
    secret_refs: Mapped[str | None] = mapped_column(Text)
    image_properties: Mapped[JSONDict]
    hints: Mapped[JSONDict]
    network_info: Mapped[list[Any]] = mapped_column(JSON, default=list)
    deploy_info: Mapped[JSONDict]  # kernel/ramdisk refs, checksums, root_mb, swap_mb
    last_error: Mapped[str | None] = mapped_column(Text)
    deleted_at: Mapped[dt.datetime | None]


class ComputeNode(Base):
    __tablename__ = "compute_nodes"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[intpk]
    bm_node_id: Mapped[int] = mapped_column(ForeignKey("bm_nodes.id", ondelete="CASCADE"), unique=True)
    service_host: Mapped[str255] = mapped_column(index=True)
    hypervisor_hostname: Mapped[str255]
    vcpus: Mapped[int]
    memory_mb: Mapped[int]
    local_gb: Mapped[int]
    vcpus_used: Mapped[int]
    memory_mb_used: Mapped[int]
    local_gb_used: Mapped[int]
    free_ram_mb: Mapped[int]
    free_disk_gb: Mapped[int]
    hypervisor_type: Mapped[str] = mapped_column(String(255))
    hypervisor_version: Mapped[int] = mapped_column(BigInteger)
    cpu_info: Mapped[str] = mapped_column(Text)
    running_vms: Mapped[int]
    updated_at: Mapped[timestamp]


class Service(Base):
    __tablename__ = "services"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[intpk]
    host: Mapped[str] = mapped_column(String(255), unique=True)
    binary: Mapped[str] = mapped_column(String(64), default="bmd")
    version: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[timestamp]
    last_heartbeat: Mapped[timestamp]
    disabled: Mapped[bool] = mapped_column(default=False)
    # the node groups it serves (service.groups) and where its API answers (forwarded requests)
    groups: Mapped[list[str]] = mapped_column(JSON, default=lambda: [""], server_default=text("'[\"\"]'"))
    api_url: Mapped[str | None] = mapped_column(String(255))


class SchemaCompat(Base):
    """One row per migrated revision: the oldest code head that still runs on that schema (a rolling
    upgrade: bmd.db.migrate.check_schema of an older service reads it)."""

    __tablename__ = "bmd_schema_compat"

    revision: Mapped[str] = mapped_column(String(32), primary_key=True)
    oldest_code: Mapped[str] = mapped_column(String(32))


class ApiToken(Base):
    """A named API token with a role (bmd.auth). Only the token's SHA-256 is kept: the clear text is shown
    once, by ``bmd token create``. A revoked row stays (``revoked_at``), so an audit line naming its id
    still names one token, and the name cannot be taken again by a new token."""

    __tablename__ = "api_tokens"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[timestamp]
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]


# Core handles for bulk statements (executemany) that bypass the ORM.
bm_nodes_table = cast(Table, BareMetalNode.__table__)
bm_interfaces_table = cast(Table, Interface.__table__)
compute_nodes_table = cast(Table, ComputeNode.__table__)
node_events_table = cast(Table, NodeEvent.__table__)
