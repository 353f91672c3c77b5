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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.config import DeploySettings
from bmd.db.models import PxeIp
from bmd.drivers.deploy.checksum import parse_checksum
from bmd.drivers.deploy.refs import parse_image_ref
from bmd.drivers.deploy.spec import ImageRef
from bmd.errors import InvalidInput
from bmd.provision.records import NoMorePxeIps
from bmd.provision.request import DeployRequest
from bmd.ramdisk import KERNEL_NAME, RAMDISK_NAME

__all__ = ["check_deploy_request", "check_pxe_ips", "deploy_refs", "deploy_roles", "is_whole_disk"]


@dataclass(frozen=True)
class Role:
    """One image of a deploy: its ref and checksum (the request's, else the configured ref), and the
    request fields an error names."""

    ref: ImageRef
    ref_field: str
    checksum_field: str


def _role(ref: str | None, checksum: str | None, fallback: str, setting: str, field: str) -> Role:
    """The request's ref (``field``_ref) or the configured ``deploy.<setting>``."""
    value = ref or fallback
    if not value:
        raise InvalidInput(f"{field}_ref: not given and no deploy.{setting} configured", field=f"{field}_ref")
    return Role(ImageRef(value, checksum), f"{field}_ref", f"{field}_checksum")


def is_whole_disk(request: DeployRequest, deploy: DeploySettings) -> bool:
    """A whole-disk image: the request says so (``whole_disk``), or there is neither an instance kernel nor
    a ramdisk (the request's or configured). One without the other is InvalidInput naming the missing
    one's field. Cheap, no I/O."""
    r = request
    if r.whole_disk:
        for given, name in ((r.kernel_ref, "kernel_ref"), (r.ramdisk_ref, "ramdisk_ref")):
            if given:
                raise InvalidInput(f"{name}: a whole-disk image (whole_disk: true) boots no kernel/ramdisk", field=name)
        return True
    kernel, ramdisk = r.kernel_ref or deploy.boot_kernel, r.ramdisk_ref or deploy.boot_ramdisk
    if r.whole_disk is None and not kernel and not ramdisk:
        return True
    for have, name, setting in ((kernel, "kernel", "boot_kernel"), (ramdisk, "ramdisk", "boot_ramdisk")):
        if not have:
            raise InvalidInput(
                f"{name}_ref: not given and no deploy.{setting} configured (a partition image needs both kernel "
                "and ramdisk; a whole-disk image neither)",
                field=f"{name}_ref",
            )
    return False


def deploy_roles(request: DeployRequest, deploy: DeploySettings, ramdisk_dir: Path | None = None) -> dict[str, Role]:
    """Every image of one deploy by role (``deploy_kernel``, ``deploy_ramdisk``, ``kernel``, ``ramdisk``,
    ``image``): the request's ref and checksum, else the configured one; an empty ``deploy.deploy_kernel``
    or ``deploy_ramdisk`` means that file in ``ramdisk_dir`` (``<state_dir>/ramdisk``, what ``bmd ramdisk
    build`` writes). ``kernel`` and ``ramdisk`` are absent for a whole-disk image (:func:`is_whole_disk`).
    InvalidInput naming the ref's field when a needed one is not there. Cheap, no I/O."""
    r = request
    dk, dr = (str(ramdisk_dir / n) if ramdisk_dir is not None else "" for n in (KERNEL_NAME, RAMDISK_NAME))
    roles = {
        "deploy_kernel": _role(None, None, deploy.deploy_kernel or dk, "deploy_kernel", "deploy_kernel"),
        "deploy_ramdisk": _role(None, None, deploy.deploy_ramdisk or dr, "deploy_ramdisk", "deploy_ramdisk"),
        "image": Role(ImageRef(r.image_ref, r.image_checksum), "image_ref", "image_checksum"),
    }
    if not is_whole_disk(r, deploy):
        roles["kernel"] = _role(r.kernel_ref, r.kernel_checksum, deploy.boot_kernel, "kernel", "kernel")
        roles["ramdisk"] = _role(r.ramdisk_ref, r.ramdisk_checksum, deploy.boot_ramdisk, "ramdisk", "ramdisk")
    return roles


def deploy_refs(request: DeployRequest, deploy: DeploySettings, ramdisk_dir: Path | None = None) -> dict[str, ImageRef]:
    """``deploy_roles``' refs by role."""
    return {role: r.ref for role, r in deploy_roles(request, deploy, ramdisk_dir).items()}


async def check_deploy_request(
    request: DeployRequest,
    deploy: DeploySettings,
    allowed_local_roots: Sequence[Path],
    ramdisk_dir: Path | None = None,
) -> None:
    """Every ref and checksum of the request as the image cache will read them; InvalidInput naming the
    field (``image_ref``, ``kernel_checksum``, ...). Local refs (and the allowed roots) are resolved in a thread.
    A built ramdisk the empty ``deploy.*`` settings point at must exist (else: run ``bmd ramdisk build``)."""
    roles = deploy_roles(request, deploy, ramdisk_dir)
    for role in roles.values():
        parse_checksum(role.ref.checksum, field=role.checksum_field)
    built = {
        name: roles[name] for name in ("deploy_kernel", "deploy_ramdisk") if not getattr(deploy, name) and ramdisk_dir
    }

    def parse_all() -> None:
        for name, role in built.items():
            if not Path(role.ref.ref).is_file():
                raise InvalidInput(
                    f"{role.ref_field}: not given, no deploy.{name} configured and {role.ref.ref} does not exist: "
                    "run `bmd ramdisk build`",
                    field=role.ref_field,
                )
        extra = [ramdisk_dir] if ramdisk_dir is not None else []
        roots = [Path(root).resolve() for root in [*allowed_local_roots, *extra]]  # as the image cache resolves them
        for role in roles.values():
            parse_image_ref(role.ref.ref, roots, field=role.ref_field)

    await asyncio.to_thread(parse_all)


async def check_pxe_ips(session: AsyncSession, needed: int) -> None:
    """NoMorePxeIps (409 ``no_pxe_ip``) when fewer than ``needed`` addresses of the pool are free."""
    free = int(await session.scalar(select(func.count(PxeIp.id)).where(PxeIp.bm_node_id.is_(None))) or 0)
    if free < needed:
        raise NoMorePxeIps(
            f"no PXE IP left for {needed} instance(s): {free} free in bm_pxe_ips (add some with `bmd pxe-ip add`)"
        )
