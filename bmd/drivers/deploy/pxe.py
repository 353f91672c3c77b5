"""The PXE deploy writer: per-node pxelinux configs, iPXE scripts and the images they boot.

Layout (``tftp_root`` and ``http_root`` may be the same directory)::

    <tftp_root>/boot.ipxe                           static: chains to ipxe/01-${mac:hexhyp}.ipxe (TFTP chain)
    <tftp_root>/pxelinux.cfg/01-<mac-with-dashes>  -> ../<node_uuid>/config      (BIOS nodes only)
    <tftp_root>/grub/grub.cfg-01-<mac-with-dashes> -> ../<node_uuid>/grub.cfg    (UEFI nodes only)
    <tftp_root>/<node_uuid>/config                  pxelinux config: default deploy|boot
    <tftp_root>/<node_uuid>/grub.cfg                GRUB config: set default=deploy|boot
    <tftp_root>/<node_uuid>/{deploy_kernel,deploy_ramdisk,kernel,ramdisk}
    <http_root>/boot.ipxe                           static: chains to ipxe/01-${mac:hexhyp}.ipxe
    <http_root>/ipxe/01-<mac-with-dashes>.ipxe      -> ../<node_uuid>/boot.ipxe  (relative symlink, per MAC)
    <http_root>/<node_uuid>/boot.ipxe               iPXE script: goto deploy|boot (BIOS and UEFI alike)
    <http_root>/<node_uuid>/{deploy_kernel,deploy_ramdisk,kernel,ramdisk}
    <image_root>/<node_uuid>/disk                   the instance's image: only for the deploy's agent token
    <image_root>/<node_uuid>/disk.sha256            its checksum (sha256:<hex>), handed out by the lookup
    <image_root>/<node_uuid>/configdrive.iso        the config drive, when the instance has one (token too)

A whole-disk image has no ``kernel``/``ramdisk``: the boot-mode files boot the local disk instead
(see :mod:`bmd.drivers.deploy.templates`). The per-MAC links follow the node's boot mode: pxelinux for
``bios``, GRUB for ``uefi``, iPXE for both.

Image files are hard links into the :class:`~bmd.drivers.deploy.images.ImageCache` (a copy when the cache is on
another filesystem): the link keeps the bytes alive for the node whatever the cache evicts, and the cache
sees ``st_nlink > 1`` and leaves the entry alone. The boot-mode config is rendered next to the deploy-mode
one (``.config.boot``, ``.boot.ipxe.boot``) and :meth:`PXEDeploy.switch_to_boot` renames it over, so the
switch is one atomic rename per file.

Nothing under ``tftp_root``/``http_root`` is secret (TFTP and HTTP boot cannot authenticate): the deploy
label names the node and bmd's URL, no more. The disk image lives under ``image_root``, which is never
served anonymously; the agent fetches it with its token (:mod:`bmd.api.agent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

import structlog

from bmd.drivers.deploy import templates as t
from bmd.drivers.deploy.fsutil import (
    in_thread,
    link_or_copy,
    make_public_dir,
    make_public_dirs,
    symlink_atomic,
    write_atomic,
    write_private,
)
from bmd.drivers.deploy.images import ImageCache
from bmd.drivers.deploy.spec import (
    DeploySpec,
    ImageRef,
    PXELayout,
    PXESettings,
    check_node_uuid,
    mac_link_name,
    normalize_mac,
    validate_spec,
)
from bmd.errors import Conflict, DriverError, NotFound

__all__ = [
    "DeploySpec",
    "ImageRef",
    "PXEDeploy",
    "PXELayout",
    "PXESettings",
    "mac_link_name",
    "normalize_mac",
]

log = structlog.get_logger(__name__)

TFTP_LINK_DIR = "pxelinux.cfg"
IPXE_LINK_DIR = "ipxe"
GRUB_LINK_DIR = "grub"
CHAIN_SCRIPT = "boot.ipxe"


class PXEDeploy:
    """Writes and removes per-node boot files. Verbs are async; file work runs in threads."""

    def __init__(self, settings: PXESettings, cache: ImageCache) -> None:
        self.settings = settings
        self.cache = cache

    # -- paths ----------------------------------------------------------------------------------------

    def _dirs(self, node_uuid: str) -> tuple[Path, Path]:
        node_uuid = check_node_uuid(node_uuid)  # again here: these paths get rmtree'd
        return self.settings.tftp_root / node_uuid, self.settings.http_root / node_uuid

    def image_dir(self, node_uuid: str) -> Path:
        return self.settings.image_root / check_node_uuid(node_uuid)

    def config_drive_path(self, node_uuid: str) -> Path:
        return self.image_dir(node_uuid) / t.CONFIG_DRIVE

    def image_path(self, node_uuid: str) -> Path:
        return self.image_dir(node_uuid) / t.DISK_IMAGE

    def config_path(self, node_uuid: str) -> Path:
        return self.settings.tftp_root / check_node_uuid(node_uuid) / t.PXE_CONFIG

    def ipxe_path(self, node_uuid: str) -> Path:
        return self.settings.http_root / check_node_uuid(node_uuid) / t.IPXE_SCRIPT

    def node_url(self, node_uuid: str) -> str:
        return f"{self.settings.http_url}/{check_node_uuid(node_uuid)}"

    # -- verbs ----------------------------------------------------------------------------------------

    def validate(self, spec: DeploySpec) -> None:
        """Cheap, no I/O: InvalidInput naming the field for anything that cannot go into a boot file."""
        validate_spec(spec)

    async def ensure_layout(self) -> None:
        """Create the roots, the MAC link directories and the static ``boot.ipxe`` chain script."""
        await in_thread(self._ensure_layout)

    async def prepare(self, spec: DeploySpec) -> PXELayout:
        """Fetch the node's images and write its boot files in deploy mode (replacing any earlier ones).

        All or nothing: on failure nothing of this node is left behind. MAC links are written last, so a
        node that PXE boots mid-way finds either no config or a complete one.
        """
        self.validate(spec)
        macs = sorted({normalize_mac(m) for m in spec.macs})
        await self.ensure_layout()
        await in_thread(self._check_mac_owners, spec.node_uuid, macs)
        names = {t.DEPLOY_KERNEL: spec.deploy_kernel, t.DEPLOY_RAMDISK: spec.deploy_ramdisk}
        if spec.image is not None:  # None: a ramdisk-only boot (cleaning), the same deploy label
            names[t.DISK_IMAGE] = spec.image
        if spec.kernel is not None and spec.ramdisk is not None:
            names[t.KERNEL] = spec.kernel
            names[t.RAMDISK] = spec.ramdisk
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = {
                        name: tg.create_task(stack.enter_async_context(self.cache.lease(ref.ref, ref.checksum)))
                        for name, ref in names.items()
                    }
            except BaseExceptionGroup as group:
                first = group.exceptions[0]
                raise first from (group if len(group.exceptions) > 1 else None)
            paths = {name: task.result() for name, task in tasks.items()}
            image_checksum = f"sha256:{self.cache.describe(paths[t.DISK_IMAGE]).sha256}" if spec.image else ""
            node_url = self.node_url(spec.node_uuid)
            deploy_args = t.kernel_args(
                {t.ARG_NODE_UUID: spec.node_uuid, t.ARG_BMD_URL: spec.bmd_url.rstrip("/")},
                self.settings.append_params,
            )
            boot_args = t.kernel_args({"root": spec.root_device}, "ro " + self.settings.append_params)
            params = t.BootParams(spec.node_uuid, deploy_args, boot_args, node_url, spec.whole_disk, tuple(macs))
            links = await in_thread(
                self._write_node, params, paths, macs, image_checksum, spec.boot_mode, spec.config_drive
            )
        layout = PXELayout(
            node_dir=self._dirs(spec.node_uuid)[0],
            config_path=self.config_path(spec.node_uuid),
            ipxe_path=self.ipxe_path(spec.node_uuid),
            mac_links=links,
            image_path=self.image_path(spec.node_uuid),
            image_checksum=image_checksum,
        )
        log.info(
            "pxe_config_written",
            node_uuid=spec.node_uuid,
            deployment_id=spec.deployment_id,
            macs=macs,
            config_path=str(layout.config_path),
            boot_mode=spec.boot_mode,
            whole_disk=spec.whole_disk,
            config_drive=spec.config_drive is not None,
        )
        return layout

    async def image_checksum(self, node_uuid: str) -> str:
        """The checksum ``prepare`` recorded for the node's disk image (NotFound when there is none)."""
        path = self.image_dir(node_uuid) / f"{t.DISK_IMAGE}.sha256"
        try:
            return (await in_thread(path.read_text)).strip()
        except FileNotFoundError:
            raise NotFound(f"node {node_uuid} has no disk image prepared") from None

    async def switch_to_boot(self, node_uuid: str) -> None:
        """Make the node boot its instance next time (``default boot``). Atomic and idempotent."""
        check_node_uuid(node_uuid)
        if await in_thread(self._switch, node_uuid):
            log.info("pxe_switched_to_boot", node_uuid=node_uuid)
        else:
            log.info("pxe_switch_skipped", node_uuid=node_uuid, reason="no boot files of the node here")

    async def clean(self, node_uuid: str) -> None:
        """Remove the node's MAC links and directories. Idempotent; copes with any half-deleted state."""
        check_node_uuid(node_uuid)
        removed = await in_thread(self._clean, node_uuid)
        log.info("pxe_cleaned", node_uuid=node_uuid, mac_links_removed=removed)

    # -- file work (threads) ----------------------------------------------------------------------

    def _link_dirs(self, boot_mode: str | None = None) -> tuple[tuple[Path, str, str, str], ...]:
        """(link directory, link prefix, link suffix, file the link points at) for pxelinux, iPXE and GRUB;
        only those a node of ``boot_mode`` boots from when it is given, all of them otherwise."""
        every = {
            "pxelinux": (self.settings.tftp_root / TFTP_LINK_DIR, "", "", t.PXE_CONFIG),
            "ipxe": (self.settings.http_root / IPXE_LINK_DIR, "", ".ipxe", t.IPXE_SCRIPT),
            "grub": (self.settings.tftp_root / GRUB_LINK_DIR, "grub.cfg-", "", t.GRUB_CONFIG),
        }
        if boot_mode is None:
            return tuple(every.values())
        wanted = ("pxelinux", "ipxe") if boot_mode == "bios" else ("ipxe", "grub")
        return tuple(every[k] for k in wanted)

    def _ensure_layout(self) -> None:
        for link_dir, _, _, _ in self._link_dirs():
            make_public_dirs(link_dir)
        text = t.ipxe_chain(self.settings.http_url)
        # Both roots: iPXE may fetch the chain script over HTTP or TFTP (QEMU user-mode TFTP, dnsmasq).
        for root in {self.settings.http_root, self.settings.tftp_root}:
            chain = root / CHAIN_SCRIPT
            if not chain.exists() or chain.read_text() != text:
                write_atomic(chain, text)

    def _link_owner(self, link: Path) -> str | None:
        """The node a MAC link points at (``../<uuid>/<file>``), None if it is not one of ours."""
        try:
            parts = Path(os.readlink(link)).parts
        except OSError:
            return None
        return parts[1] if len(parts) == 3 and parts[0] == ".." else None

    def _check_mac_owners(self, node_uuid: str, macs: list[str]) -> None:
        for link_dir, prefix, suffix, _ in self._link_dirs():
            for mac in macs:
                owner = self._link_owner(link_dir / f"{prefix}{mac_link_name(mac)}{suffix}")
                if owner not in (None, node_uuid) and (link_dir.parent / owner).is_dir():
                    raise Conflict(f"MAC {mac} already boots node {owner}; clean that node first")

    def _write_node(
        self,
        params: t.BootParams,
        paths: dict[str, Path],
        macs: list[str],
        image_checksum: str,
        boot_mode: str = "bios",
        config_drive: bytes | None = None,
    ) -> tuple[Path, ...]:
        node_uuid = params.node_uuid
        tftp_dir, http_dir = self._dirs(node_uuid)
        image_dir = self.image_dir(node_uuid)
        self._clean(node_uuid)
        try:
            for d in {tftp_dir, http_dir}:
                make_public_dir(d)  # served by tftpd / dnsmasq as another user: 0755, not the umask's
            self.settings.image_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            image_dir.mkdir(mode=0o700)
            for name, src in paths.items():
                if name == t.DISK_IMAGE:
                    link_or_copy(src, image_dir / name)  # bmd serves it itself, to the agent's token only
                    continue
                link_or_copy(src, tftp_dir / name, public=True)
                if http_dir != tftp_dir:
                    link_or_copy(src, http_dir / name, public=True)
            if image_checksum:
                write_atomic(image_dir / f"{t.DISK_IMAGE}.sha256", image_checksum + "\n")
            if config_drive is not None:
                write_private(image_dir / t.CONFIG_DRIVE, config_drive)
            write_atomic(tftp_dir / f".{t.PXE_CONFIG}.boot", t.pxe_config(params, deploy=False))
            write_atomic(tftp_dir / t.PXE_CONFIG, t.pxe_config(params, deploy=True))
            write_atomic(http_dir / f".{t.IPXE_SCRIPT}.boot", t.ipxe_script(params, deploy=False))
            write_atomic(http_dir / t.IPXE_SCRIPT, t.ipxe_script(params, deploy=True))
            write_atomic(tftp_dir / f".{t.GRUB_CONFIG}.boot", t.grub_config(params, deploy=False))
            write_atomic(tftp_dir / t.GRUB_CONFIG, t.grub_config(params, deploy=True))
            links: list[Path] = []
            for link_dir, prefix, suffix, target in self._link_dirs(boot_mode):
                for mac in macs:
                    link = link_dir / f"{prefix}{mac_link_name(mac)}{suffix}"
                    symlink_atomic(f"../{node_uuid}/{target}", link)
                    links.append(link)
            return tuple(links)
        except BaseException:
            self._clean(node_uuid)
            raise

    def _switch(self, node_uuid: str) -> bool:
        """True when switched; False when this service holds no boot files for the node at all (a deploy
        another service prepared: see DeployInterface.switch_to_boot)."""
        tftp_dir, http_dir = self._dirs(node_uuid)
        if not tftp_dir.exists() and not http_dir.exists():
            return False
        for d, name, marker in (
            (tftp_dir, t.PXE_CONFIG, "default boot"),
            (http_dir, t.IPXE_SCRIPT, "goto boot"),
            (tftp_dir, t.GRUB_CONFIG, "set default=boot"),
        ):
            staged, live = d / f".{name}.boot", d / name
            try:
                os.replace(staged, live)
                continue
            except FileNotFoundError:
                pass
            try:
                text = live.read_text()
            except FileNotFoundError:
                if name == t.GRUB_CONFIG:  # prepared before bmd wrote GRUB configs
                    continue
                raise NotFound(f"node {node_uuid} has no {name} to switch to boot") from None
            if marker not in text.splitlines():
                raise DriverError(f"{live} is neither in deploy mode with a staged boot file nor in boot mode")
        return True

    def _clean(self, node_uuid: str) -> int:
        removed = 0
        for link_dir, _, _, _ in self._link_dirs():
            with contextlib.suppress(FileNotFoundError), os.scandir(link_dir) as it:
                for item in it:
                    if item.is_symlink() and self._link_owner(Path(item.path)) == node_uuid:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(item.path)
                            removed += 1
        for d in {*self._dirs(node_uuid), self.image_dir(node_uuid)}:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(d)
        return removed
