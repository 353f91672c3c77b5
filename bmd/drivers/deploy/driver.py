"""``pxe``: the deploy interface bmd ships, PXE/iPXE boot files plus the deploy agent's protocol.

The writer (:class:`~bmd.drivers.deploy.pxe.PXEDeploy`) needs the URL at which booting nodes reach bmd,
known only once the API is bound; ``prepare`` takes it from the deploy spec (``bmd_url``). The other verbs
only touch files under the configured roots.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bmd.drivers.base import DeployInterface, NodeFacts
from bmd.drivers.deploy.images import ImageCache
from bmd.drivers.deploy.pxe import PXEDeploy
from bmd.drivers.deploy.spec import DeploySpec, PXELayout, PXESettings
from bmd.errors import InvalidInput
from bmd.ramdisk import ramdisk_dir

if TYPE_CHECKING:
    from bmd.config import DeploySettings, Settings

# The writer for the verbs that never write a URL (switch_to_boot, clean, image_checksum) before any prepare:
# a reserved name (RFC 2606), so a URL written from it by mistake could never reach anything.
_FILES_ONLY_URL = "http://bmd.invalid"


class PXEDriver(DeployInterface):
    """PXE deploy: per-node pxelinux/iPXE files, images from the verified cache, the agent calls back."""

    name = "pxe"

    def __init__(self, deploy: DeploySettings, image_root: Path, cache: ImageCache) -> None:
        self.deploy = deploy
        self.image_root = image_root
        self.cache = cache
        self._writers: dict[str, PXEDeploy] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> PXEDriver:
        """From the ``[deploy]`` section; the image cache is this driver's own (closed by ``close``)."""
        d = settings.deploy
        cache = ImageCache(
            Path(d.image_cache_dir).resolve(),
            d.image_cache_max_bytes,
            # + what `bmd ramdisk build` wrote, which empty deploy.deploy_kernel/deploy_ramdisk settings mean
            allowed_local_roots=[Path(p).resolve() for p in d.allowed_image_roots]
            + [ramdisk_dir(settings.service.state_dir)],
            convert_timeout=d.image_convert_timeout,
        )
        return cls(d, Path(settings.service.state_dir, "agent-images").resolve(), cache)

    def validate(self, node: NodeFacts) -> None:
        """The node has a MAC to PXE boot from, and the deploy roots are configured. No I/O."""
        if node.interfaces < 1:
            raise InvalidInput("no interface: PXE boot needs a MAC", field="interfaces")
        for key in ("tftp_root", "http_root"):
            if not str(getattr(self.deploy, key)).strip():
                raise InvalidInput(f"deploy.{key} is not configured", field=f"deploy.{key}")

    def writer(self, bmd_url: str) -> PXEDeploy:
        """The file writer for nodes that reach bmd at ``bmd_url`` (one in practice; built on first use)."""
        base = bmd_url.rstrip("/")
        found = self._writers.get(base)
        if found is None:
            d = self.deploy
            settings = PXESettings(
                tftp_root=Path(d.tftp_root).resolve(),
                http_root=Path(d.http_root).resolve(),
                http_url=f"{base}/images",
                image_root=self.image_root,
                append_params=d.append_params,
            )
            found = self._writers[base] = PXEDeploy(settings, self.cache)
        return found

    def _files(self) -> PXEDeploy:
        return next(iter(self._writers.values())) if self._writers else self.writer(_FILES_ONLY_URL)

    async def prepare(self, spec: DeploySpec) -> PXELayout:
        return await self.writer(spec.bmd_url).prepare(spec)

    async def image_checksum(self, node_uuid: str) -> str:
        return await self._files().image_checksum(node_uuid)

    async def switch_to_boot(self, node_uuid: str) -> None:
        await self._files().switch_to_boot(node_uuid)

    async def clean(self, node_uuid: str) -> None:
        await self._files().clean(node_uuid)

    async def close(self) -> None:
        await self.cache.close()
