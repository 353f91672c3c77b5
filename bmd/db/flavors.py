"""Query functions for flavors (the seed's instance_types) and their extra specs."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.models import InstanceType, InstanceTypeExtraSpec
from bmd.errors import NotFound
from bmd.flavors import Flavor


def to_flavor(row: InstanceType, specs: Sequence[InstanceTypeExtraSpec]) -> Flavor:
    return Flavor(
        id=row.id,
        name=row.name,
        flavorid=row.flavorid,
        memory_mb=row.memory_mb,
        vcpus=row.vcpus,
        root_gb=row.root_gb,
        ephemeral_gb=row.ephemeral_gb,
        swap=row.swap,
        extra_specs={s.key: s.value or "" for s in specs},
    )


async def get_flavor_row(session: AsyncSession, name: str, *, for_update: bool = False) -> InstanceType:
    stmt = select(InstanceType).where(InstanceType.name == name, InstanceType.disabled.is_(False))
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"flavor {name} not found")
    return row


async def spec_rows(session: AsyncSession, flavor_ids: Sequence[int]) -> dict[int, list[InstanceTypeExtraSpec]]:
    out: dict[int, list[InstanceTypeExtraSpec]] = {i: [] for i in flavor_ids}
    if flavor_ids:
        stmt = (
            select(InstanceTypeExtraSpec)
            .where(InstanceTypeExtraSpec.instance_type_id.in_(flavor_ids))
            .order_by(InstanceTypeExtraSpec.key)
        )
        for spec in (await session.execute(stmt)).scalars():
            out[spec.instance_type_id].append(spec)
    return out


async def get_flavor(session: AsyncSession, name: str) -> Flavor:
    row = await get_flavor_row(session, name)
    return to_flavor(row, (await spec_rows(session, [row.id]))[row.id])


async def list_flavors(session: AsyncSession, *, limit: int | None = None, marker: str | None = None) -> list[Flavor]:
    """Enabled flavors by name; ``marker``: only names after it (keyset paging), at most ``limit``."""
    stmt = select(InstanceType).where(InstanceType.disabled.is_(False))
    if marker is not None:
        stmt = stmt.where(InstanceType.name > marker)
    rows = (await session.execute(stmt.order_by(InstanceType.name).limit(limit))).scalars().all()
    specs = await spec_rows(session, [r.id for r in rows])
    return [to_flavor(r, specs[r.id]) for r in rows]


async def set_extra_specs(session: AsyncSession, flavor: InstanceType, specs: dict[str, str]) -> None:
    existing = {s.key: s for s in (await spec_rows(session, [flavor.id]))[flavor.id]}
    for key, value in specs.items():
        if key in existing:
            existing[key].value = value
        else:
            session.add(InstanceTypeExtraSpec(instance_type_id=flavor.id, key=key, value=value))
    await session.flush()
