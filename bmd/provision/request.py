"""One deploy request, typed: what a deploy boots and writes, built once from the API body.

Stored in ``instances.image_ref`` (the disk image) and ``instances.deploy_info`` (the rest, ``to_json``),
read back with ``from_json``. Refs are stored in their displayed form: the clear refs of those that carry
credentials or a signature are in ``instances.secret_refs`` (sealed and opened in
:mod:`bmd.drivers.deploy.refs`), put back with ``with_clear`` when the deploy runs.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bmd.db.models import Instance
from bmd.drivers.deploy.configdrive import ConfigDrive
from bmd.drivers.deploy.refs import seal_refs
from bmd.secrets import SecretBox

__all__ = ["DeployRequest", "stored_request"]

_USER_DATA = "user_data_b64"  # its name in the sealed secret_refs


@dataclass(frozen=True)
class DeployRequest:
    image_ref: str
    image_checksum: str | None = None
    kernel_ref: str | None = None  # None: the configured deploy.boot_kernel
    kernel_checksum: str | None = None
    ramdisk_ref: str | None = None  # None: the configured deploy.boot_ramdisk
    ramdisk_checksum: str | None = None
    root_mb: int = 0
    swap_mb: int = 0
    name: str | None = None
    whole_disk: bool | None = None  # True: no kernel/ramdisk even if configured; None: neither → whole disk
    # The config drive (any of them set → the instance has one). user_data may be secret: never shown by
    # the API (instance views show only its size), never logged (not in the repr), stored sealed in
    # instances.secret_refs (``sealed``; ``with_clear`` puts it back) with only its size in deploy_info.
    hostname: str | None = None
    ssh_keys: tuple[str, ...] = ()
    meta: Mapping[str, str] | None = None
    network_data: Mapping[str, Any] | None = None
    user_data: bytes | None = dataclasses.field(default=None, repr=False)
    user_data_bytes: int | None = None  # its size, kept when the stored request has it sealed away

    def __post_init__(self) -> None:
        if self.user_data is not None and self.user_data_bytes is None:
            object.__setattr__(self, "user_data_bytes", len(self.user_data))

    @property
    def has_config_drive(self) -> bool:
        return bool(self.hostname or self.ssh_keys or self.meta or self.network_data is not None) or (
            self.user_data_bytes is not None
        )

    def config_drive(self, instance_uuid: str) -> ConfigDrive | None:
        """What the instance's config drive holds, None when the request asked for none."""
        if not self.has_config_drive:
            return None
        return ConfigDrive(
            uuid=instance_uuid,
            name=self.name,
            hostname=self.hostname,
            ssh_keys=self.ssh_keys,
            meta=dict(self.meta or {}),
            network_data=self.network_data,
            user_data=self.user_data,
        )

    def config_drive_view(self) -> dict[str, Any] | None:
        """The config drive as the API shows it: user_data by size only, network_data by its presence."""
        if not self.has_config_drive:
            return None
        return {
            "hostname": self.hostname,
            "ssh_keys": list(self.ssh_keys),
            "meta": dict(self.meta or {}),
            "network_data": self.network_data is not None,
            "user_data_bytes": self.user_data_bytes,
        }

    def to_json(self) -> dict[str, Any]:
        """``instances.deploy_info`` (the image ref has its own column)."""
        return {
            "image_checksum": self.image_checksum,
            "kernel_ref": self.kernel_ref,
            "kernel_checksum": self.kernel_checksum,
            "ramdisk_ref": self.ramdisk_ref,
            "ramdisk_checksum": self.ramdisk_checksum,
            "root_mb": self.root_mb,
            "swap_mb": self.swap_mb,
            "name": self.name,
            "whole_disk": self.whole_disk,
            "hostname": self.hostname,
            "ssh_keys": list(self.ssh_keys),
            "meta": dict(self.meta) if self.meta is not None else None,
            "network_data": dict(self.network_data) if self.network_data is not None else None,
            "user_data_bytes": self.user_data_bytes,  # the bytes themselves are sealed (secret_refs)
        }

    @classmethod
    def from_json(cls, info: Mapping[str, Any], image_ref: str | None) -> DeployRequest:
        """The request as ``to_json`` stored it (missing keys, from older rows, take their defaults)."""
        return cls(
            image_ref=image_ref or "",
            image_checksum=info.get("image_checksum") or None,
            kernel_ref=info.get("kernel_ref") or None,
            kernel_checksum=info.get("kernel_checksum") or None,
            ramdisk_ref=info.get("ramdisk_ref") or None,
            ramdisk_checksum=info.get("ramdisk_checksum") or None,
            root_mb=int(info.get("root_mb") or 0),
            swap_mb=int(info.get("swap_mb") or 0),
            name=info.get("name") or None,
            whole_disk=info.get("whole_disk"),
            hostname=info.get("hostname") or None,
            ssh_keys=tuple(info.get("ssh_keys") or ()),
            meta=info.get("meta") or None,
            network_data=info.get("network_data"),
            user_data_bytes=None if info.get("user_data_bytes") is None else int(info["user_data_bytes"]),
        )

    def _refs(self) -> dict[str, str | None]:
        return {"image_ref": self.image_ref, "kernel_ref": self.kernel_ref, "ramdisk_ref": self.ramdisk_ref}

    def sealed(self, box: SecretBox) -> tuple[DeployRequest, str | None]:
        """The request as stored (refs in their displayed form, user_data taken out) and
        ``instances.secret_refs`` (the refs that carry credentials and the user_data, encrypted)."""
        extra = {} if self.user_data is None else {_USER_DATA: base64.b64encode(self.user_data).decode()}
        shown, secret = seal_refs(self._refs(), box, extra)
        stored = dataclasses.replace(
            self,
            image_ref=shown["image_ref"] or "",
            kernel_ref=shown["kernel_ref"],
            ramdisk_ref=shown["ramdisk_ref"],
            user_data=None,
            user_data_bytes=self.user_data_bytes,
        )
        return stored, secret

    def with_clear(self, clear: Mapping[str, str]) -> DeployRequest:
        """The stored request with the clear refs that ``sealed`` took out (``open_refs``) put back."""
        sealed_user_data = clear.get(_USER_DATA)
        return dataclasses.replace(
            self,
            image_ref=clear.get("image_ref") or self.image_ref,
            kernel_ref=clear.get("kernel_ref") or self.kernel_ref,
            ramdisk_ref=clear.get("ramdisk_ref") or self.ramdisk_ref,
            user_data=self.user_data if sealed_user_data is None else base64.b64decode(sealed_user_data),
        )


def stored_request(instance: Instance) -> DeployRequest:
    """The instance's deploy request as stored (refs redacted; see ``DeployRequest.with_clear``)."""
    return DeployRequest.from_json(instance.deploy_info, instance.image_ref)
