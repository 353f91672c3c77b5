"""What a deploy request alone decides, checked before any node is claimed.

``deploy_refs`` is the one place that says which image a deploy boots for each role — the request's ref or
the configured default — used both by the API's pre-check and by ``Provisioner.deploy_spec`` at spawn.
``check_deploy_request`` parses every ref (scheme, allowed local roots) and checksum the way the image cache
will, so a request that could never deploy is a 400 naming the field instead of a claimed node that fails
later. ``check_pxe_ips`` refuses a request that more nodes than free PXE addresses would need (a concurrent
request can still take them first; then the spawn fails cleanly as before).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.config import DeploySettings
from bmd.db.models import PxeIp
from bmd.drivers.deploy.checksum import parse_checksum
from bmd.drivers.deploy.refs import parse_image_ref
from bmd.drivers.deploy.spec import ImageRef
from bmd.errors import InvalidInput
from bmd.provision.records import NoMorePxeIps

__all__ = ["check_deploy_request", "check_pxe_ips", "deploy_refs"]


def deploy_refs(info: Mapping[str, Any], image_ref: str, deploy: DeploySettings) -> dict[str, ImageRef]:
    """Every image of one deploy by role (``deploy_kernel``, ``deploy_ramdisk``, ``kernel``, ``ramdisk``,
    ``image``): the request's ``<role>_ref`` / ``<role>_checksum`` (in ``info``), else the configured one.
    InvalidInput naming ``<role>_ref`` when neither is there. Cheap, no I/O."""
    fallbacks = {
        "deploy_kernel": deploy.deploy_kernel,
        "deploy_ramdisk": deploy.deploy_ramdisk,
        "kernel": deploy.boot_kernel,
        "ramdisk": deploy.boot_ramdisk,
    }
    refs: dict[str, ImageRef] = {}
    for role, fallback in fallbacks.items():
        value = info.get(f"{role}_ref") or fallback
        if not value:
            raise InvalidInput(f"{role}_ref: not given and no deploy.{role} configured", field=f"{role}_ref")
        refs[role] = ImageRef(value, info.get(f"{role}_checksum") or None)
    refs["image"] = ImageRef(image_ref, info.get("image_checksum") or None)
    return refs


async def check_deploy_request(
    info: Mapping[str, Any], image_ref: str, deploy: DeploySettings, allowed_local_roots: Sequence[Path]
) -> None:
    """Every ref and checksum of the request as the image cache will read them; InvalidInput naming the
    field (``image_ref``, ``kernel_checksum``, ...). Local refs (and the allowed roots) are resolved in a thread."""
    refs = deploy_refs(info, image_ref, deploy)
    for role, ref in refs.items():
        parse_checksum(ref.checksum, field=f"{role}_checksum")

    def parse_all() -> None:
        roots = [Path(root).resolve() for root in allowed_local_roots]  # as the image cache resolves them
        for role, ref in refs.items():
            parse_image_ref(ref.ref, roots, field=f"{role}_ref")

    await asyncio.to_thread(parse_all)


async def check_pxe_ips(session: AsyncSession, needed: int) -> None:
    """NoMorePxeIps (409 ``no_pxe_ip``) when fewer than ``needed`` addresses of the pool are free."""
    free = int(await session.scalar(select(func.count(PxeIp.id)).where(PxeIp.bm_node_id.is_(None))) or 0)
    if free < needed:
        raise NoMorePxeIps(
            f"no PXE IP left for {needed} instance(s): {free} free in bm_pxe_ips (add some with `bmd pxe-ip add`)"
        )
