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

from bmd.deploy.refs import display_ref
from bmd.errors import ConfigError, InvalidInput

_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
TOKEN = re.compile(r"^[^\s\"'$\\;`]+$")  # one kernel argument value, nothing a config could misread
_DEPLOYMENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_KEY = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


@dataclass(frozen=True, slots=True)
class PXESettings:
    """The ``[deploy]`` settings the writer needs.

    ``http_url`` is the URL at which bmd serves ``http_root`` (the :mod:`bmd.deploy.http` sub-app), as
    the booting node sees it, e.g. ``http://10.0.0.1:6385/images``.
    """

    tftp_root: Path
    http_root: Path
    http_url: str
    append_params: str = ""  # extra kernel args on both labels, e.g. "console=ttyS0,115200n8"

    def __post_init__(self) -> None:
        for key in ("tftp_root", "http_root"):
            value = Path(getattr(self, key))
            if not value.is_absolute():
                raise ConfigError(f"deploy.{key} must be an absolute path, got {str(value)!r}")
            object.__setattr__(self, key, value)
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
    """One node's deploy. ``deployment_key`` is a secret: hidden from repr, never logged."""

    node_uuid: str
    macs: Sequence[str]
    deployment_id: str
    deployment_key: str = field(repr=False)
    callback_url: str
    deploy_kernel: ImageRef
    deploy_ramdisk: ImageRef
    kernel: ImageRef
    ramdisk: ImageRef
    image: ImageRef
    root_mb: int = 0
    swap_mb: int = 0
    root_device: str = "LABEL=root"  # the boot label's root= argument


@dataclass(frozen=True, slots=True)
class PXELayout:
    """What :meth:`PXEDeploy.prepare` wrote; ``config_path`` is ``bm_deployments.pxe_config_path``."""

    node_dir: Path
    config_path: Path
    ipxe_path: Path
    mac_links: tuple[Path, ...]
    image_url: str
    image_checksum: str  # sha256:<hex>, as handed to the agent


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
    if not isinstance(spec.deployment_key, str) or not _KEY.match(spec.deployment_key):
        raise InvalidInput("deployment_key must be 16-128 of [A-Za-z0-9_-]", field="deployment_key")
    _check_url(spec.callback_url, "callback_url")
    for name in ("root_mb", "swap_mb"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f"{name} must be a non-negative integer, got {value!r}", field=name)
    if not isinstance(spec.root_device, str) or not TOKEN.match(spec.root_device):
        raise InvalidInput(f"root_device must be one token, got {spec.root_device!r}", field="root_device")
    for name in ("deploy_kernel", "deploy_ramdisk", "kernel", "ramdisk", "image"):
        ref = getattr(spec, name)
        if not isinstance(ref, ImageRef) or not isinstance(ref.ref, str) or not ref.ref.strip():
            raise InvalidInput(f"{name} needs an image ref", field=name)
