"""Query functions for nodes, interfaces and PXE IPs. They take a session; the caller owns the transaction."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from sqlalchemy import ColumnElement, and_, case, false, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.models import BareMetalNode, Interface, PxeIp, UTCDateTime, UTCText, bm_nodes_table
from bmd.errors import Conflict, NotFound
from bmd.ids import is_id_text, parse_id

SECRET_MASK = "******"

FREE_WHEN: Mapping[str, Any] = MappingProxyType(
    {"instance_uuid": None, "provision_state": "available", "maintenance": False}
)
"""The one definition of a free node (one that can take an instance): the ``bm_nodes`` columns and the
value each holds. ``FREE`` is it in SQL, ``is_free`` in Python for rows already loaded."""

FREE: ColumnElement[bool] = and_(
    *(
        bm_nodes_table.c[column].is_(value)
        if value is None or isinstance(value, bool)
        else bm_nodes_table.c[column] == value
        for column, value in FREE_WHEN.items()
    )
)


def is_free(instance_uuid: str | None, provision_state: str, maintenance: bool) -> bool:
    """``FREE`` for a row already loaded."""
    values = {"instance_uuid": instance_uuid, "provision_state": provision_state, "maintenance": bool(maintenance)}
    return all(values[column] == value for column, value in FREE_WHEN.items())


NODE_FIELDS = (
    "id",
    "uuid",
    "name",
    "service_host",
    "conductor_group",
    "instance_uuid",
    "cpus",
    "memory_mb",
    "local_gb",
    "pm_driver",
    "pm_address",
    "pm_user",
    "prov_mac_address",
    "registration_status",
    "task_state",
    "prov_vlan_id",
    "terminal_port",
    "power_state",
    "last_power_check",
    "power_failures",
    "last_power_error",
    "provision_state",
    "provision_updated_at",
    "deploy_deadline",
    "maintenance",
    "maintenance_reason",
    "maintenance_set_by",
    "last_error",
    "extra_specs",
    "boot_mode",
    "root_device",
    "deploy_steps",
    "inspected_at",
    "created_at",
    "updated_at",
)
INTERFACE_FIELDS = ("id", "bm_node_id", "address", "datapath_id", "port_no", "vif_uuid")
PXE_IP_FIELDS = ("id", "address", "server_address", "bm_node_id")


def node_to_dict(node: BareMetalNode, interfaces: Iterable[Interface] | None = None) -> dict[str, Any]:
    """The public view of a node: never the password, only whether one is set."""
    out = {f: getattr(node, f) for f in NODE_FIELDS}
    out["pm_password"] = SECRET_MASK if node.pm_password else None
    if interfaces is not None:
        out["interfaces"] = [interface_to_dict(i) for i in interfaces]
    return out


_VIEW_KEYS = (*NODE_FIELDS, "pm_password")
_VIEW_COLUMNS = (
    *(
        type_coerce(bm_nodes_table.c[f], UTCText()).label(f)
        if isinstance(bm_nodes_table.c[f].type, UTCDateTime)
        else bm_nodes_table.c[f]
        for f in NODE_FIELDS
    ),
    case((bm_nodes_table.c.pm_password != "", SECRET_MASK)).label("pm_password"),  # NULL: no password
)


def interface_to_dict(iface: Interface) -> dict[str, Any]:
    return {f: getattr(iface, f) for f in INTERFACE_FIELDS}


def pxe_ip_to_dict(ip: PxeIp) -> dict[str, Any]:
    return {f: getattr(ip, f) for f in PXE_IP_FIELDS}


def node_lookup(ident: str) -> Any:
    """A WHERE clause for a node named by id (ASCII digits, at most 2**63-1), uuid or name."""
    if is_id_text(ident):
        node_id = parse_id(ident)
        return BareMetalNode.id == node_id if node_id is not None else false()
    if re.fullmatch(r"[0-9a-fA-F-]{36}", ident):
        return BareMetalNode.uuid == ident.lower()
    return BareMetalNode.name == ident


async def get_node(session: AsyncSession, ident: str | int, *, for_update: bool = False) -> BareMetalNode:
    stmt = select(BareMetalNode).where(node_lookup(str(ident)))
    if for_update:
        stmt = stmt.with_for_update()
    node = (await session.execute(stmt)).scalar_one_or_none()
    if node is None:
        raise NotFound(f"node {ident} not found")
    return node


async def list_nodes(
    session: AsyncSession,
    *,
    service_host: str | None = None,
    provision_state: str | None = None,
    maintenance: bool | None = None,
    associated: bool | None = None,
    limit: int = 1000,
    marker: int | None = None,
) -> list[dict[str, Any]]:
    """A keyset page of nodes (``id > marker`` in id order) as their public view, ``node_to_dict``'s.

    Read as plain rows of the view's columns: no ORM object per node, and neither the password's cipher text
    (SQL says whether there is one) nor the inspection report is read — most of a big page's cost."""
    conds = []
    if service_host is not None:
        conds.append(bm_nodes_table.c.service_host == service_host)
    if provision_state is not None:
        conds.append(bm_nodes_table.c.provision_state == provision_state)
    if maintenance is not None:
        conds.append(bm_nodes_table.c.maintenance == maintenance)
    if associated is not None:
        uuid = bm_nodes_table.c.instance_uuid
        conds.append(uuid.is_not(None) if associated else uuid.is_(None))
    if marker is not None:
        conds.append(bm_nodes_table.c.id > marker)
    stmt = select(*_VIEW_COLUMNS).where(and_(True, *conds)).order_by(bm_nodes_table.c.id).limit(limit)
    return [dict(zip(_VIEW_KEYS, row, strict=True)) for row in (await session.execute(stmt)).all()]


async def node_interfaces(session: AsyncSession, node_ids: Sequence[int]) -> dict[int, list[Interface]]:
    out: dict[int, list[Interface]] = {i: [] for i in node_ids}
    if node_ids:
        rows = await session.execute(select(Interface).where(Interface.bm_node_id.in_(node_ids)).order_by(Interface.id))
        for iface in rows.scalars():
            out[iface.bm_node_id].append(iface)
    return out


async def check_unique(
    session: AsyncSession,
    *,
    node_id: int | None = None,
    uuid: str | None = None,
    name: str | None = None,
    macs: Sequence[str] = (),
    prov_mac: str | None = None,
) -> None:
    """Raise Conflict naming the field when a unique value is already taken (by another node).

    Runs without autoflush: a PATCH has already set the new values on the node, and flushing them here
    would raise the IntegrityError this check exists to turn into a 409."""
    with session.no_autoflush:
        await _check_unique(session, node_id=node_id, uuid=uuid, name=name, macs=macs, prov_mac=prov_mac)


async def _check_unique(
    session: AsyncSession,
    *,
    node_id: int | None,
    uuid: str | None,
    name: str | None,
    macs: Sequence[str],
    prov_mac: str | None,
) -> None:
    others = BareMetalNode.id != (node_id if node_id is not None else -1)
    checks: list[tuple[str, Any, Any]] = []
    if uuid:
        checks.append(("uuid", uuid, BareMetalNode.uuid == uuid))
    if name:
        checks.append(("name", name, BareMetalNode.name == name))
    if prov_mac:
        checks.append(("prov_mac_address", prov_mac, BareMetalNode.prov_mac_address == prov_mac))
    for field, value, cond in checks:
        hit = await session.scalar(select(BareMetalNode.id).where(cond, others))
        if hit is not None:
            raise Conflict(f"{field} {value} is already used by node {hit}", field=field)
    dup = _first_duplicate(macs)
    if dup:
        raise Conflict(f"interfaces: MAC {dup} is listed twice", field="interfaces")
    if macs:
        hit_iface = (
            await session.execute(select(Interface).where(Interface.address.in_(list(macs))).limit(1))
        ).scalar_one_or_none()
        if hit_iface is not None:
            raise Conflict(
                f"interface address {hit_iface.address} is already used by node {hit_iface.bm_node_id}",
                field="address",
            )


async def check_unique_many(session: AsyncSession, nodes: Sequence[BareMetalNode], macs: Sequence[str]) -> None:
    """check_unique for a batch: duplicates inside the batch, then against the database (a few statements)."""
    for field in ("uuid", "name", "prov_mac_address"):
        values = [getattr(n, field) for n in nodes if getattr(n, field)]
        dup = _first_duplicate(values)
        if dup:
            raise Conflict(f"{field} {dup} appears twice in the inventory", field=field)
        column = getattr(BareMetalNode, field)
        for chunk in _chunks(values):
            hit = (await session.execute(select(column, BareMetalNode.id).where(column.in_(chunk)).limit(1))).first()
            if hit is not None:
                raise Conflict(f"{field} {hit[0]} is already used by node {hit[1]}", field=field)
    dup_mac = _first_duplicate(macs)
    if dup_mac:
        raise Conflict(f"interface address {dup_mac} appears twice in the inventory", field="interfaces.address")
    for chunk in _chunks(list(macs)):
        hit = (
            await session.execute(
                select(Interface.address, Interface.bm_node_id).where(Interface.address.in_(chunk)).limit(1)
            )
        ).first()
        if hit is not None:
            raise Conflict(f"interface address {hit[0]} is already used by node {hit[1]}", field="interfaces.address")


def _chunks(values: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def _first_duplicate(values: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


_UNIQUE = re.compile(r"UNIQUE constraint failed: (\w+)\.(\w+)|unique constraint \"uq_(\w+?)_(\w+)\"", re.I)


def conflict_from(err: IntegrityError) -> Conflict:
    """Turn a unique-constraint violation (SQLite or PostgreSQL wording) into a Conflict naming the column."""
    match = _UNIQUE.search(str(err.orig))
    if match:
        table, column = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        return Conflict(f"{table}.{column}: the value is already in use", field=column)
    return Conflict(f"the change conflicts with stored data: {err.orig}")
