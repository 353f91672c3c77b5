"""What a PXE deploy is made of: the settings, one node's deploy spec, and the checks on both.

Everything that ends up in a boot file is checked here, without I/O: a value is one token (no whitespace,
quotes, ``$`` or ``;``), so it can never add a line or a directive to a pxelinux config or an iPXE script,
and names that become paths (node UUID, MACs) cannot leave their directory.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bmd.drivers.deploy.refs import display_ref
from bmd.errors import ConfigError, InvalidInput

_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
TOKEN = re.compile(r"^[^\s\"'$\\;`]+$")  # one kernel argument value, nothing a config could misread
_DEPLOYMENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
BOOT_MODES = ("bios", "uefi")


@dataclass(frozen=True, slots=True)
class PXESettings:
    """The ``[deploy]`` settings the writer needs.

    ``http_url`` is the URL at which bmd serves ``http_root`` (the :mod:`bmd.drivers.deploy.http` sub-app), as
    the booting node sees it, e.g. ``http://10.0.0.1:6385/images``. ``image_root`` holds each node's disk
    image, served only to the agent holding the deploy's token: it must not be under ``tftp_root`` or
    ``http_root``, which are served to anyone.
    """

    tftp_root: Path
    http_root: Path
    http_url: str
    image_root: Path
    append_params: str = ""  # extra kernel args on both labels, e.g. "console=ttyS0,115200n8"

    def __post_init__(self) -> None:
        for key in ("tftp_root", "http_root", "image_root"):
            value = Path(getattr(self, key))
            if not value.is_absolute():
                raise ConfigError(f"deploy.{key} must be an absolute path, got {str(value)!r}")
            object.__setattr__(self, key, value)
        private = self.image_root.resolve()
        for key in ("tftp_root", "http_root"):
            served = Path(getattr(self, key)).resolve()
            if private.is_relative_to(served) or served.is_relative_to(private):
                raise ConfigError(f"deploy.image_root ({private}) must not overlap deploy.{key} ({served})")
        url = self.http_url.rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not TOKEN.match(url):
            raise ConfigError(f"deploy.http_url must be an http(s):// URL without spaces, got {self.http_url!r}")
        object.__setattr__(self, "http_url", url)
        if not all(TOKEN.match(arg) for arg in self.append_params.split()):
            raise ConfigError("deploy.append_params must be plain kernel arguments (no quotes, '$' or ';')")


@dataclass(frozen=True, slots=True, repr=False)
class ImageRef:
    """A ref as the cache fetches it: it may carry credentials, so its repr shows only the redacted form."""

    ref: str
    checksum: str | None = None

    def __repr__(self) -> str:
        return f"ImageRef({display_ref(self.ref)!r}, checksum={self.checksum!r})"


@dataclass(frozen=True, slots=True)
class DeploySpec:
    """One node's deploy. Nothing here is secret: it all ends up in files served without authentication,
    except the disk image, which goes to ``image_root``."""

    node_uuid: str
    macs: Sequence[str]
    deployment_id: str
    bmd_url: str  # bmd's base URL as the node sees it: the agent looks up its token there
    deploy_kernel: ImageRef
    deploy_ramdisk: ImageRef
    kernel: ImageRef | None  # None with ramdisk None: a whole-disk image, the boot label boots the local disk
    ramdisk: ImageRef | None
    image: ImageRef | None  # None: a ramdisk-only boot (cleaning): no disk image is staged
    root_device: str = "LABEL=root"  # the boot label's root= argument (partition images only)
    boot_mode: str = "bios"  # "uefi": no pxelinux links (pxelinux is BIOS only), GRUB links instead
    # The config drive ISO, written next to the disk image (never under the served roots). It may hold
    # user_data, which can be sensitive: kept out of the repr.
    config_drive: bytes | None = field(default=None, repr=False)

    @property
    def whole_disk(self) -> bool:
        return self.kernel is None and self.ramdisk is None


@dataclass(frozen=True, slots=True)
class PXELayout:
    """What :meth:`PXEDeploy.prepare` wrote; ``config_path`` is ``bm_deployments.pxe_config_path``."""

    node_dir: Path
    config_path: Path
    ipxe_path: Path
    mac_links: tuple[Path, ...]
    image_path: Path  # <image_root>/<node_uuid>/disk: served only with the deploy's agent token
    image_checksum: str  # sha256:<hex>, as handed to the agent by the lookup ("" for a ramdisk-only boot)


def normalize_mac(mac: object, field: str = "macs") -> str:
    """``AA-bb-CC:...`` → ``aa:bb:cc:...``; InvalidInput naming ``field`` when it is not a MAC."""
    if not isinstance(mac, str) or not _MAC.match(mac.strip().lower()):
        raise InvalidInput(f"{field}: {mac!r} is not a MAC address (six hex pairs)", field=field)
    return mac.strip().lower().replace("-", ":")


def mac_link_name(mac: str) -> str:
    """pxelinux's per-interface file name: ``01-`` (Ethernet) and the MAC with dashes, lowercase."""
    return "01-" + normalize_mac(mac).replace(":", "-")


def check_node_uuid(value: object) -> str:
    try:
        canonical: str | None = str(uuid.UUID(str(value)))
    except ValueError:
        canonical = None
    if canonical is None or canonical != value:
        raise InvalidInput(f"node_uuid must be a canonical lowercase UUID, got {value!r}", field="node_uuid")
    return canonical


def _check_url(value: str, name: str) -> None:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not TOKEN.match(value):
        raise InvalidInput(f"{name} must be an http(s):// URL without spaces or quotes", field=name)


def validate_spec(spec: DeploySpec) -> None:
    """Cheap, no I/O: InvalidInput naming the field for anything that cannot go into a boot file."""
    check_node_uuid(spec.node_uuid)
    if isinstance(spec.macs, str) or not spec.macs:
        raise InvalidInput("macs: a node needs at least one interface MAC to PXE boot", field="macs")
    for mac in spec.macs:
        normalize_mac(mac)
    if not isinstance(spec.deployment_id, str) or not _DEPLOYMENT_ID.match(spec.deployment_id):
        raise InvalidInput("deployment_id must be 1-64 of [A-Za-z0-9._-]", field="deployment_id")
    _check_url(spec.bmd_url, "bmd_url")
    if not isinstance(spec.root_device, str) or not TOKEN.match(spec.root_device):
        raise InvalidInput(f"root_device must be one token, got {spec.root_device!r}", field="root_device")
    if spec.boot_mode not in BOOT_MODES:
        raise InvalidInput(
            f"boot_mode must be one of {', '.join(BOOT_MODES)}, got {spec.boot_mode!r}", field="boot_mode"
        )
    if (spec.kernel is None) != (spec.ramdisk is None):
        missing = "kernel" if spec.kernel is None else "ramdisk"
        raise InvalidInput(
            f"{missing} is missing: a partition image needs both kernel and ramdisk, a whole-disk image neither",
            field=missing,
        )
    if spec.config_drive is not None and not isinstance(spec.config_drive, bytes):
        raise InvalidInput("config_drive must be the ISO's bytes", field="config_drive")
    names = ("deploy_kernel", "deploy_ramdisk") + (() if spec.image is None else ("image",))
    names += () if spec.whole_disk else ("kernel", "ramdisk")
    for name in names:
        ref = getattr(spec, name)
        if not isinstance(ref, ImageRef) or not isinstance(ref.ref, str) or not ref.ref.strip():
            raise InvalidInput(f"{name} needs an image ref", field=name)
